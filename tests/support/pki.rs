//! A throwaway certificate authority for TLS tests, made with the openssl
//! command: a CA, a server certificate for 127.0.0.1 it signed, and client
//! certificates with a chosen common name (for `cn:` identities).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pki {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// A certificate and its key.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A self-signed certificate for 127.0.0.1 and localhost that no client
/// trusts unless told to (`tls.crt`, `tls.key` in `dir`).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-keyout",
        s(&key),
        "-out",
        s(&cert),
    ]);
    (cert, key)
}

impl Pki {
    /// A CA named `name` under `dir`, with a server certificate for 127.0.0.1.
    pub fn new(dir: &Path, name: &str) -> Pki {
        Pki::for_addresses(dir, name, &["127.0.0.1"])
    }

    /// A CA with a server certificate for these IP addresses (and localhost).
    pub fn for_addresses(dir: &Path, name: &str, ips: &[&str]) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let ca_cert = dir.join(format!("{name}-ca.crt"));
        let ca_key = dir.join(format!("{name}-ca.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name} test CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            s(&ca_key),
            "-out",
            s(&ca_cert),
        ]);
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            ca_cert,
            ca_key,
            server_cert: PathBuf::new(),
            server_key: PathBuf::new(),
        };
        let server = pki.issue(
            "server",
            "localhost",
            &format!(
                "subjectAltName={}DNS:localhost\nextendedKeyUsage=serverAuth",
                ips.iter().map(|ip| format!("IP:{ip},")).collect::<String>()
            ),
        );
        pki.server_cert = server.cert;
        pki.server_key = server.key;
        pki
    }

    /// A client certificate with common name `cn`, signed by this CA.
    pub fn client(&self, cn: &str) -> Pair {
        self.issue(&format!("client-{cn}"), cn, "extendedKeyUsage=clientAuth")
    }

    fn issue(&self, file: &str, cn: &str, extensions: &str) -> Pair {
        let (key, csr, cert, ext) = (
            self.dir.join(format!("{file}.key")),
            self.dir.join(format!("{file}.csr")),
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.ext")),
        );
        std::fs::write(&ext, format!("basicConstraints=critical,CA:FALSE\n{extensions}\n")).expect("ext file");
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            s(&key),
            "-out",
            s(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(&self.ca_cert),
            "-CAkey",
            s(&self.ca_key),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            s(&ext),
            "-out",
            s(&cert),
        ]);
        Pair { cert, key }
    }
}
