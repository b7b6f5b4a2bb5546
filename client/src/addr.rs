//! Parsing and validation of node addresses given to [`Client::connect`](crate::Client::connect).
//!
//! Addresses are checked eagerly (a typo should fail at start-up, not on the first
//! call), while the connections themselves are made lazily, so that a node being
//! down at start-up is not an error.

use tonic::transport::Endpoint;

use crate::Error;

/// A validated node address: the normalized text (for messages) and its endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Address {
    /// `scheme://authority`, e.g. `http://10.0.0.1:7070`.
    pub(crate) text: String,
    pub(crate) endpoint: Endpoint,
    /// `https://`: TLS (see [`crate::ClientTls`]).
    pub(crate) tls: bool,
}

/// Parses one address: `http://host:port`, `https://host:port` or bare `host:port`.
///
/// Surrounding whitespace is ignored. A bare address must name its port (Tessera
/// has no well-known port, so a missing one is almost certainly a mistake); with a
/// scheme the port defaults to the scheme's. Paths and queries are rejected: the
/// gRPC service lives at the root.
///
/// `https://` is TLS (the node's certificate checked against
/// [`crate::ClientTls`]); `http://` and bare addresses are plaintext HTTP/2.
pub(crate) fn parse_address(raw: &str) -> Result<Address, Error> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(Error::InvalidAddress("empty address".to_owned()));
    }
    let invalid = |why: &str| Error::InvalidAddress(format!("{trimmed:?}: {why}"));

    let bare = !trimmed.contains("://");
    let (scheme, with_scheme) = if bare {
        ("http", format!("http://{trimmed}"))
    } else {
        let (scheme, rest) = trimmed.split_once("://").unwrap_or((trimmed, ""));
        match scheme.to_ascii_lowercase().as_str() {
            "http" => ("http", format!("http://{rest}")),
            "https" => ("https", format!("https://{rest}")),
            _ => {
                return Err(invalid(
                    "scheme must be http:// or https:// (or leave it out)",
                ));
            }
        }
    };

    let endpoint = Endpoint::from_shared(with_scheme)
        .map_err(|_| invalid("not a valid host:port or http:// URL"))?;
    let uri = endpoint.uri();
    let host = uri.host().unwrap_or_default();
    if host.is_empty() {
        return Err(invalid("missing host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid("must not have a path or query"));
    }
    let has_port_text = uri.authority().and_then(|a| a.port()).is_some();
    match uri.port_u16() {
        Some(0) => return Err(invalid("port must not be 0")),
        None if has_port_text => return Err(invalid("invalid port")),
        None if bare => return Err(invalid("missing port (expected host:port)")),
        _ => {}
    }
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    if authority.contains('@') {
        return Err(invalid("must not contain user info"));
    }
    Ok(Address {
        text: format!("{scheme}://{authority}"),
        endpoint,
        tls: scheme == "https",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        match parse_address(raw) {
            Ok(a) => a.text,
            Err(e) => panic!("{raw:?} should parse, got {e}"),
        }
    }

    fn err(raw: &str) -> String {
        match parse_address(raw) {
            Ok(a) => panic!("{raw:?} should be rejected, got {}", a.text),
            Err(Error::InvalidAddress(msg)) => msg,
            Err(e) => panic!("{raw:?}: wrong error kind {e:?}"),
        }
    }

    #[test]
    fn accepts_http_urls_and_bare_host_port() {
        assert_eq!(ok("http://127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(ok("http://127.0.0.1:7070/"), "http://127.0.0.1:7070");
        assert_eq!(ok("HTTP://node-1:7070"), "http://node-1:7070");
        assert_eq!(ok("127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(
            ok("  tessera.internal:7070 \n"),
            "http://tessera.internal:7070"
        );
        assert_eq!(ok("[::1]:7070"), "http://[::1]:7070");
        assert_eq!(ok("http://[::1]:7070"), "http://[::1]:7070");
        // With a scheme the port may default (e.g. behind a port-80 ingress).
        assert_eq!(ok("http://tessera.internal"), "http://tessera.internal");
    }

    #[test]
    fn rejects_malformed_addresses() {
        assert!(err("").contains("empty"));
        assert!(err("   ").contains("empty"));
        assert!(err("localhost").contains("missing port"));
        assert!(err("ftp://host:21").contains("scheme"));
        assert!(err("unix:///tmp/sock").contains("scheme"));
        assert!(err("http://host:7070/tessera").contains("path"));
        assert!(err("http://host:7070?x=1").contains("path or query"));
        assert!(err("host:0").contains("port must not be 0"));
        err("host:port");
        err("host:99999");
        err("http://");
        err("http://:7070");
        err("ho st:7070");
        assert!(err("http://user@host:7070").contains("user info"));
    }

    #[test]
    fn https_addresses_are_tls() {
        assert_eq!(ok("https://node:7070"), "https://node:7070");
        assert_eq!(ok("HTTPS://node:7070/"), "https://node:7070");
        assert!(parse_address("https://node:7070").unwrap().tls);
        assert!(!parse_address("node:7070").unwrap().tls);
    }
}
