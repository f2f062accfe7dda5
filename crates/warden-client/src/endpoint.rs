//! Endpoint strings: parsing what users type (`host:port`, `http://host:port`,
//! `[::1]:2379`) into the canonical `host:port` form the client keys its
//! connections by.
//!
//! Owns: the one parser of addresses users type. `warden server` uses it too,
//! for its listen, peer, initial-cluster, route and join addresses, so a
//! member accepts exactly the address forms a client does.
//!
//! Must never: touch the network (pure string handling; resolving and
//! dialing happen in the client), or accept an address it cannot turn into
//! a dialable `host:port`.

use super::error::ClientError;

/// Parses a comma-separated endpoint list (`a:1,b:2`) or a single endpoint.
/// Empty items (from `a,,b` or a trailing comma) are skipped; duplicates are
/// kept once, in first-seen order.
pub fn parse_endpoints<S: AsRef<str>>(items: &[S]) -> Result<Vec<String>, ClientError> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        for part in item.as_ref().split(',') {
            if part.trim().is_empty() {
                continue;
            }
            let ep = parse_endpoint(part)?;
            if !out.contains(&ep) {
                out.push(ep);
            }
        }
    }
    if out.is_empty() {
        return Err(ClientError::NoEndpoints);
    }
    Ok(out)
}

/// Parses one endpoint into canonical `host:port`.
///
/// Accepts an optional `http://` or `https://` scheme and a trailing `/`
/// (whether TLS is used is set by `ClientOptions::tls`, as with etcdctl,
/// whose `--cacert` turns it on). Other schemes, paths, a missing or
/// non-numeric port and an empty host are refused.
///
/// ```
/// use warden_client::parse_endpoint;
/// assert_eq!(parse_endpoint("http://127.0.0.1:2379/").unwrap(), "127.0.0.1:2379");
/// assert!(parse_endpoint("127.0.0.1").is_err());
/// assert!(parse_endpoint("ftp://h:1").is_err());
/// ```
pub fn parse_endpoint(raw: &str) -> Result<String, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidEndpoint {
        endpoint: raw.to_string(),
        reason: reason.to_string(),
    };
    let s = raw.trim();
    let rest = if let Some((scheme, rest)) = s.split_once("://") {
        match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => rest,
            _ => {
                return Err(invalid(
                    "unsupported scheme; use host:port or http://host:port",
                ))
            }
        }
    } else {
        s
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(invalid("a path is not allowed; use host:port"));
    }
    let (host, port) = if let Some(after_bracket) = rest.strip_prefix('[') {
        // [v6-address]:port
        let Some((host, tail)) = after_bracket.split_once(']') else {
            return Err(invalid("unclosed '[' in IPv6 address"));
        };
        let Some(port) = tail.strip_prefix(':') else {
            return Err(invalid("missing port (expected [host]:port)"));
        };
        (format!("[{host}]"), port)
    } else {
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(invalid("missing port (expected host:port)"));
        };
        if host.contains(':') {
            return Err(invalid("IPv6 addresses must be written as [addr]:port"));
        }
        (host.to_string(), port)
    };
    if host.is_empty() || host == "[]" {
        return Err(invalid("empty host"));
    }
    if host.chars().any(char::is_whitespace) {
        return Err(invalid("whitespace in host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(format!("{host}:{p}")),
        _ => Err(invalid("port must be a number from 1 to 65535")),
    }
}

/// The URI tonic dials for a canonical endpoint, over TLS or not.
pub fn endpoint_uri(endpoint: &str, tls: bool) -> String {
    if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_http_forms() {
        assert_eq!(
            parse_endpoint("127.0.0.1:2379").ok(),
            Some("127.0.0.1:2379".into())
        );
        assert_eq!(
            parse_endpoint("http://localhost:23790").ok(),
            Some("localhost:23790".into())
        );
        assert_eq!(parse_endpoint(" HTTP://a:1/ ").ok(), Some("a:1".into()));
        assert_eq!(parse_endpoint("[::1]:2379").ok(), Some("[::1]:2379".into()));
        assert_eq!(
            parse_endpoint("http://[::1]:2379").ok(),
            Some("[::1]:2379".into())
        );
        assert_eq!(parse_endpoint("a:007").ok(), Some("a:7".into()));
    }

    #[test]
    fn refuses_bad_endpoints() {
        for bad in [
            "localhost",
            "localhost:",
            ":2379",
            "a:0",
            "a:65536",
            "a:x",
            "unix://sock",
            "a:1/path",
            "::1:2379",
            "[::1]",
            "[::1:2379",
            "[]:1",
            "a b:1",
        ] {
            let err = parse_endpoint(bad);
            assert!(
                matches!(err, Err(ClientError::InvalidEndpoint { .. })),
                "{bad:?} should be refused, got {err:?}"
            );
        }
    }

    #[test]
    fn error_names_the_endpoint() {
        let msg = parse_endpoint("nope")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("\"nope\""), "{msg}");
        assert!(msg.contains("missing port"), "{msg}");
    }

    #[test]
    fn lists_split_dedup_and_skip_empty() {
        let got = parse_endpoints(&["a:1,b:2", "http://a:1", ",c:3,"]).ok();
        assert_eq!(
            got,
            Some(vec!["a:1".to_string(), "b:2".into(), "c:3".into()])
        );
        assert!(matches!(
            parse_endpoints(&[" , "]),
            Err(ClientError::NoEndpoints)
        ));
        let none: [&str; 0] = [];
        assert!(matches!(
            parse_endpoints(&none),
            Err(ClientError::NoEndpoints)
        ));
        assert!(parse_endpoints(&["a:1,bad"]).is_err());
    }

    #[test]
    fn uri() {
        assert_eq!(endpoint_uri("a:1", false), "http://a:1");
        assert_eq!(endpoint_uri("a:1", true), "https://a:1");
    }
}
