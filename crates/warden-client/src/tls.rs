//! TLS for client connections, as etcdctl's `--cacert`, `--cert` and
//! `--key`: the CA a server's certificate must chain to, and a certificate
//! of our own for servers that require one (`--client-cert-auth`). The files
//! are read each time a connection is made, so rotating them on disk needs
//! no restart of a long-lived client (a member dialing its peers is one).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::ClientError;

/// Where the TLS files of a client are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM CA certificates the server's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// PEM certificate presented to servers that ask for one.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Tls(format!("reading {what} {}: {e}", path.display())))
}

impl TlsOptions {
    /// tonic's TLS configuration for a server known as `host` (the DNS name
    /// or IP address its certificate must be valid for).
    pub fn tonic_config(&self, host: &str) -> Result<ClientTlsConfig, ClientError> {
        let mut cfg = ClientTlsConfig::new().domain_name(host);
        if let Some(ca) = &self.ca {
            cfg = cfg.ca_certificate(Certificate::from_pem(read("CA certificate", ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                cfg = cfg.identity(Identity::from_pem(
                    read("certificate", cert)?,
                    read("private key", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(ClientError::Tls(
                    "a client certificate needs both --cert and --key".into(),
                ))
            }
        }
        Ok(cfg)
    }
}

/// A tonic endpoint for a canonical `host:port`: `https` with `tls` (the
/// server's certificate checked against the host), `http` without, with
/// TCP_NODELAY. Connection settings beyond that are the caller's.
pub fn endpoint(
    addr: &str,
    tls: Option<&TlsOptions>,
) -> Result<tonic::transport::Endpoint, ClientError> {
    let invalid = |e: tonic::transport::Error| ClientError::InvalidEndpoint {
        endpoint: addr.to_string(),
        reason: e.to_string(),
    };
    let uri = crate::endpoint::endpoint_uri(addr, tls.is_some());
    let ep = tonic::transport::Endpoint::from_shared(uri)
        .map_err(invalid)?
        .tcp_nodelay(true);
    match tls {
        None => Ok(ep),
        Some(t) => ep
            .tls_config(t.tonic_config(host_of(addr))?)
            .map_err(invalid),
    }
}

/// The host part of a canonical `host:port` endpoint (an IPv6 address
/// without its brackets).
pub fn host_of(endpoint: &str) -> &str {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("127.0.0.1:2380"), "127.0.0.1");
        assert_eq!(host_of("[::1]:2380"), "::1");
        assert_eq!(host_of("n1.example:2380"), "n1.example");
    }

    #[test]
    fn a_cert_without_its_key_is_refused() {
        let o = TlsOptions {
            cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(o
            .tonic_config("h")
            .unwrap_err()
            .to_string()
            .contains("--key"));
        let missing = TlsOptions {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = missing.tonic_config("h").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
