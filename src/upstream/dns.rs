//! Name resolution for upstream connections through the system resolver,
//! with failures as a typed error, so that a lookup failure is classified as
//! `dns_resolution` by type rather than by reading an error message.

use std::net::SocketAddr;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A host name that did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {source}")]
pub struct DnsError {
    pub host: String,
    #[source]
    pub source: std::io::Error,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port on the addresses it gets.
            let found: std::io::Result<Vec<SocketAddr>> = tokio::net::lookup_host(format!("{host}:0"))
                .await
                .map(|addrs| addrs.collect());
            match found {
                Ok(addrs) => {
                    if addrs.is_empty() {
                        let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses");
                        return Err(Box::new(DnsError { host, source }) as Box<dyn std::error::Error + Send + Sync>);
                    }
                    Ok(Box::new(addrs.into_iter()) as Addrs)
                }
                Err(source) => Err(Box::new(DnsError { host, source }) as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}
