//! Ticket ids are bearer credentials: logs carry a short keyed hash instead.
//!
//! `IdTag` prints the id's kind prefix (not secret) and 12 hex digits of a
//! BLAKE3 keyed hash, e.g. `ST#3f9a0c12be47`. The key is random per process unless
//! [`set_key`] is called first, so a leaked log line cannot be matched against a
//! guessed id without the key.

use std::fmt;
use std::sync::OnceLock;

static KEY: OnceLock<[u8; 32]> = OnceLock::new();

/// Fix the hashing key (e.g. derived from the cluster secret, so tags agree
/// across nodes). Returns false if tags were already produced with another key.
pub fn set_key(key: [u8; 32]) -> bool {
    KEY.set(key).is_ok()
}

fn key() -> &'static [u8; 32] {
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        // Without OS randomness a fixed key still hides ids from casual reading.
        let _ = getrandom::fill(&mut key);
        key
    })
}

/// A loggable stand-in for a ticket id.
pub struct IdTag<'a>(&'a str);

/// Tag a ticket id for logging.
pub fn tag(id: &str) -> IdTag<'_> {
    IdTag(id)
}

impl fmt::Display for IdTag<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = self
            .0
            .split('-')
            .next()
            .filter(|p| p.len() <= 8 && p.bytes().all(|b| b.is_ascii_uppercase()))
            .unwrap_or("");
        let hash = blake3::keyed_hash(key(), self.0.as_bytes());
        let hex = hash.to_hex();
        write!(f, "{prefix}#{}", &hex.as_str()[..12])
    }
}

impl fmt::Debug for IdTag<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_hide_the_id_but_are_stable() {
        let id = "ST-1-Zx8kQm3secretpart-cas01";
        let shown = tag(id).to_string();
        assert!(shown.starts_with("ST#"), "{shown}");
        assert!(!shown.contains("Zx8k") && !shown.contains("cas01"));
        assert_eq!(shown, tag(id).to_string());
        assert_ne!(shown, tag("ST-2-other").to_string());
    }
}
