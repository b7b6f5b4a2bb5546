//! The cluster secret: the one key that admits a node to the data plane.
//!
//! Every key Tessera uses is derived from it with BLAKE3's key derivation, one
//! context string per purpose, so no derived key reveals another or the secret.

use std::fmt;
use std::path::Path;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Why a secret was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read cluster secret file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cluster secret file {path} is readable by other users (mode {mode:o}); chmod 600 it")]
    WorldReadable { path: String, mode: u32 },
    #[error("cluster secret is {len} bytes; at least {MIN_SECRET_BYTES} are required")]
    TooShort { len: usize },
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
    /// From bytes (surrounding whitespace, such as a trailing newline, ignored).
    pub fn new(bytes: &[u8]) -> Result<ClusterSecret, SecretError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort { len: trimmed.len() });
        }
        Ok(ClusterSecret(trimmed.to_vec()))
    }

    /// From a file that other users cannot read.
    pub fn from_file(path: &Path) -> Result<ClusterSecret, SecretError> {
        let shown = path.display().to_string();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|source| SecretError::Read {
                path: shown.clone(),
                source,
            })?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o004 != 0 {
                return Err(SecretError::WorldReadable { path: shown, mode });
            }
        }
        let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
            path: shown,
            source,
        })?;
        ClusterSecret::new(&bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_are_refused_and_keys_differ_by_purpose() {
        assert!(matches!(
            ClusterSecret::new(b"short\n"),
            Err(SecretError::TooShort { len: 5 })
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
}
