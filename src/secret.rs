//! The two secrets of a cluster, loaded by the same rules.
//!
//! - The **cluster secret** admits a node to the data plane. Every key Tessera
//!   uses is derived from it with BLAKE3's key derivation, one context string per
//!   purpose, so no derived key reveals another or the secret.
//! - The **API token** admits a client to the `tessera.v1.TicketStore` API: it
//!   travels as `authorization: Bearer <token>` (checked in `api::auth`).
//!
//! Both come from a file that other users cannot read, or from an environment
//! variable (never from a flag: argv is visible to every user of the machine),
//! and both must be at least [`MIN_SECRET_BYTES`] long once surrounding
//! whitespace (such as a trailing newline) is trimmed.

use std::fmt;
use std::path::Path;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Why a secret was refused. `what` names the secret ("cluster secret", "API token").
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} file {path} is readable by other users (mode {mode:o}); chmod 600 it")]
    WorldReadable {
        what: &'static str,
        path: String,
        mode: u32,
    },
    #[error("{what} is {len} bytes; at least {MIN_SECRET_BYTES} are required")]
    TooShort { what: &'static str, len: usize },
    #[error(
        "{what} must be printable ASCII without spaces (it is sent in a gRPC header, e.g. the output of `openssl rand -hex 32`)"
    )]
    NotPrintable { what: &'static str },
}

/// Bytes of a secret: surrounding whitespace trimmed, at least [`MIN_SECRET_BYTES`] left.
fn trimmed<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a [u8], SecretError> {
    let trimmed = bytes.trim_ascii();
    if trimmed.len() < MIN_SECRET_BYTES {
        return Err(SecretError::TooShort {
            what,
            len: trimmed.len(),
        });
    }
    Ok(trimmed)
}

/// The contents of a secret file, refused when other users can read it.
pub(crate) fn read_private_file(what: &'static str, path: &Path) -> Result<Vec<u8>, SecretError> {
    let shown = path.display().to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| SecretError::Read {
            what,
            path: shown.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o004 != 0 {
            return Err(SecretError::WorldReadable {
                what,
                path: shown,
                mode,
            });
        }
    }
    std::fs::read(path).map_err(|source| SecretError::Read {
        what,
        path: shown,
        source,
    })
}

/// The cluster secret. Debug never prints it.
#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    const WHAT: &'static str = "cluster secret";

    /// From bytes (surrounding whitespace, such as a trailing newline, ignored).
    pub fn new(bytes: &[u8]) -> Result<ClusterSecret, SecretError> {
        Ok(ClusterSecret(trimmed(Self::WHAT, bytes)?.to_vec()))
    }

    /// From a file that other users cannot read.
    pub fn from_file(path: &Path) -> Result<ClusterSecret, SecretError> {
        ClusterSecret::new(&read_private_file(Self::WHAT, path)?)
    }

    fn derive(&self, purpose: &str) -> [u8; 32] {
        blake3::derive_key(purpose, &self.0)
    }

    /// Pre-shared key of the Noise handshake on peer connections.
    pub fn peer_psk(&self) -> [u8; 32] {
        self.derive("tessera 2026-11 peer noise psk")
    }

    /// chitchat cluster id: differently keyed clusters never mix their gossip,
    /// and the id reveals nothing about the secret.
    pub fn gossip_cluster_id(&self) -> String {
        let key = self.derive("tessera 2026-11 gossip cluster id");
        let hex: String = key[..12].iter().map(|b| format!("{b:02x}")).collect();
        format!("tessera-{hex}")
    }

    /// Key of the log tags (`redact`), the same on every node of the cluster.
    pub fn log_tag_key(&self) -> [u8; 32] {
        self.derive("tessera 2026-11 log tag key")
    }
}

/// The API token clients present as `authorization: Bearer <token>`. Debug
/// never prints it.
///
/// Besides the length rule it must be printable ASCII without spaces, since it
/// travels in a header; hex or base64 output of a random generator is.
#[derive(Clone)]
pub struct ApiToken(String);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    const WHAT: &'static str = "API token";

    /// From bytes (surrounding whitespace, such as a trailing newline, ignored).
    pub fn new(bytes: &[u8]) -> Result<ApiToken, SecretError> {
        let token = trimmed(Self::WHAT, bytes)?;
        if !token.iter().all(u8::is_ascii_graphic) {
            return Err(SecretError::NotPrintable { what: Self::WHAT });
        }
        let token = String::from_utf8(token.to_vec())
            .map_err(|_| SecretError::NotPrintable { what: Self::WHAT })?;
        Ok(ApiToken(token))
    }

    /// From a file that other users cannot read.
    pub fn from_file(path: &Path) -> Result<ApiToken, SecretError> {
        ApiToken::new(&read_private_file(Self::WHAT, path)?)
    }

    /// The token itself, as a client sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether this token is the cluster secret itself, which must never be:
    /// the token may cross the network in cleartext, the secret never does.
    pub fn is_cluster_secret(&self, secret: &ClusterSecret) -> bool {
        self.0.as_bytes() == secret.0.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_are_refused_and_keys_differ_by_purpose() {
        assert!(matches!(
            ClusterSecret::new(b"short\n"),
            Err(SecretError::TooShort { len: 5, .. })
        ));
        let secret = ClusterSecret::new(&[7u8; 32]).unwrap();
        let other = ClusterSecret::new(&[8u8; 32]).unwrap();
        assert_ne!(secret.peer_psk(), secret.log_tag_key());
        assert_ne!(secret.peer_psk(), other.peer_psk());
        assert_ne!(secret.gossip_cluster_id(), other.gossip_cluster_id());
        assert_eq!(format!("{secret:?}"), "ClusterSecret(..)");
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), [b'x'; 40]).unwrap();
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ClusterSecret::from_file(file.path()),
            Err(SecretError::WorldReadable { .. })
        ));
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ClusterSecret::from_file(file.path()).is_ok());
    }

    #[test]
    fn api_tokens_follow_the_same_rules_and_must_fit_a_header() {
        let err = ApiToken::new(b"  short-token\n").unwrap_err().to_string();
        assert!(err.contains("API token is 11 bytes"), "{err}");
        let token = ApiToken::new(b"0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(token.expose(), "0123456789abcdef0123456789abcdef");
        assert_eq!(format!("{token:?}"), "ApiToken(..)");
        let secret = ClusterSecret::new(b"0123456789abcdef0123456789abcdef").unwrap();
        assert!(token.is_cluster_secret(&secret));
        assert!(!token.is_cluster_secret(&ClusterSecret::new(&[7u8; 32]).unwrap()));
        assert!(matches!(
            ApiToken::new(b"0123456789abcdef 0123456789abcdef"),
            Err(SecretError::NotPrintable { .. })
        ));
        assert!(matches!(
            ApiToken::new("0123456789abcdef0123456789abcdé".as_bytes()),
            Err(SecretError::NotPrintable { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_token_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), [b't'; 40]).unwrap();
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o604)).unwrap();
        let err = ApiToken::from_file(file.path()).unwrap_err();
        assert!(matches!(err, SecretError::WorldReadable { .. }));
        assert!(err.to_string().starts_with("API token file"), "{err}");
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            ApiToken::from_file(file.path()).unwrap().expose(),
            "t".repeat(40)
        );
    }
}
