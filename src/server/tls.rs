//! HTTPS through rustls: the server certificate, and, with `tls.client_ca`,
//! client certificates asked for and verified against that CA. A client
//! without a certificate may still connect (it can use Basic); one that
//! presents a certificate the CA did not sign fails the handshake. The
//! common name of a verified certificate is the client's `cn:` identity.

use std::sync::Arc;

use super::StartError;
use crate::config::TlsConfig;

/// The verified client certificate of a connection: its subject's common name.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub common_name: String,
}

fn read(p: &std::path::Path) -> Result<Vec<u8>, StartError> {
    std::fs::read(p).map_err(|e| StartError::Tls(format!("cannot read {}: {e}", p.display())))
}

pub fn acceptor(tls: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    let cert_pem = read(&tls.cert)?;
    let key_pem = read(&tls.key)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Tls(format!("tls.cert {}: {e}", tls.cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "tls.cert {}: no PEM certificate found",
            tls.cert.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| StartError::Tls(format!("tls.key {}: {e}", tls.key.display())))?
        .ok_or_else(|| StartError::Tls(format!("tls.key {}: no PEM private key found", tls.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(format!("tls.cert/tls.key do not form a usable pair: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn client_verifier(
    ca: &std::path::Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, StartError> {
    let pem = read(ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| StartError::Tls(format!("tls.client_ca {}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| StartError::Tls(format!("tls.client_ca {}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(StartError::Tls(format!(
            "tls.client_ca {}: no PEM certificate found",
            ca.display()
        )));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| StartError::Tls(format!("tls.client_ca {}: {e}", ca.display())))
}

/// The client certificate rustls verified on this connection, if any.
pub fn client_certificate(conn: &rustls::ServerConnection) -> Option<ClientCertificate> {
    let der = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let common_name = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(ClientCertificate { common_name })
}
