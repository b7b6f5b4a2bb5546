//! The ticket as clients see it, and validation of everything a client sends.
//!
//! Validation happens before the store is touched, so bad input never causes a
//! partial write; every message names the field and the limit.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::clock::Millis;
use crate::entry::Incarnation;
use crate::error::StoreError;

/// Longest ticket id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest principal, in bytes.
pub const MAX_PRINCIPAL_BYTES: usize = 256;
/// Longest kind, in bytes.
pub const MAX_KIND_BYTES: usize = 32;
/// Deepest parent chain (TGT -> PGT -> PT is 3 deep).
pub const MAX_PARENT_DEPTH: usize = 16;

/// Kinds CAS issues all day: stored as an index into this table, so a ticket of
/// one of them carries no allocation of its own for its kind.
const WELL_KNOWN_KINDS: [&str; 12] = [
    "TGT", "ST", "PT", "PGT", "PGTIOU", "TST", "OC", "AT", "RT", "DC", "DUC", "OTP",
];

/// A ticket's kind (`TGT`, `ST`...). Compares, orders and hashes as its text, so
/// nodes agree on it whatever the representation: a well-known kind is a table
/// index (no heap allocation; a 32 B malloc chunk per ticket before), any other
/// valid kind its own allocation.
#[derive(Clone)]
pub enum Kind {
    WellKnown(u8),
    Other(Box<str>),
}

impl Kind {
    pub fn as_str(&self) -> &str {
        match self {
            Kind::WellKnown(index) => WELL_KNOWN_KINDS[usize::from(*index)],
            Kind::Other(kind) => kind,
        }
    }
}

impl From<&str> for Kind {
    fn from(kind: &str) -> Kind {
        match WELL_KNOWN_KINDS.iter().position(|known| *known == kind) {
            Some(index) => Kind::WellKnown(index as u8),
            None => Kind::Other(kind.into()),
        }
    }
}

impl From<String> for Kind {
    fn from(kind: String) -> Kind {
        match WELL_KNOWN_KINDS.iter().position(|known| *known == kind) {
            Some(index) => Kind::WellKnown(index as u8),
            None => Kind::Other(kind.into_boxed_str()),
        }
    }
}

impl std::ops::Deref for Kind {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Kind {
    fn eq(&self, other: &Kind) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Kind {}

impl PartialEq<str> for Kind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Kind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for Kind {
    fn partial_cmp(&self, other: &Kind) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Kind {
    fn cmp(&self, other: &Kind) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for Kind {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits a node enforces on client input (from its configuration).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1024 * 1024,
            max_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// A live ticket, as returned to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketView {
    pub id: String,
    pub kind: String,
    pub principal: Option<String>,
    pub parent: Option<String>,
    pub payload: Bytes,
    pub created_at_ms: Millis,
    pub deadline_ms: Millis,
    pub idle_ms: Option<Millis>,
    pub last_used_ms: Millis,
    pub uses: u64,
    pub max_uses: u32,
    pub version: String,
}

impl TicketView {
    pub fn of(id: &str, inc: &Incarnation) -> TicketView {
        TicketView {
            id: id.to_owned(),
            kind: inc.identity.kind.to_string(),
            principal: inc.identity.principal.as_deref().map(str::to_owned),
            parent: inc.identity.parent.as_deref().map(str::to_owned),
            payload: Bytes::copy_from_slice(&inc.payload.val.bytes),
            created_at_ms: inc.identity.created_at_ms,
            deadline_ms: inc.identity.deadline_ms,
            idle_ms: inc.payload.val.idle_ms,
            last_used_ms: inc.last_used.0,
            uses: inc.total_uses(),
            max_uses: inc.identity.max_uses,
            version: inc.payload.marker.to_version(),
        }
    }
}

/// A ticket id: 1 to 256 bytes of printable ASCII, no whitespace.
pub fn validate_id(field: &'static str, id: &str) -> Result<(), StoreError> {
    if id.is_empty() {
        return Err(StoreError::invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(StoreError::invalid(
            field,
            format!("{} bytes exceeds the limit of {MAX_ID_BYTES}", id.len()),
        ));
    }
    // Checked without an early exit first (the compiler vectorizes it; every
    // call validates one or more ids), the position only for the error.
    let printable = id
        .bytes()
        .fold(true, |ok, b| ok & (b.wrapping_sub(b'!') <= b'~' - b'!'));
    if !printable && let Some(pos) = id.bytes().position(|b| !b.is_ascii_graphic()) {
        return Err(StoreError::invalid(
            field,
            format!(
                "byte {pos} is not printable ASCII (whitespace and control characters are not allowed)"
            ),
        ));
    }
    Ok(())
}

/// A kind: an upper-case word (`TGT`, `ST`, `PGT`...): A-Z first, then A-Z, 0-9 or `_`.
pub fn validate_kind(kind: &str) -> Result<(), StoreError> {
    let well_formed = kind.len() <= MAX_KIND_BYTES
        && kind.as_bytes().first().is_some_and(u8::is_ascii_uppercase)
        && kind
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if well_formed {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "kind",
            format!(
                "must be an upper-case word of at most {MAX_KIND_BYTES} bytes (A-Z first, then A-Z, 0-9 or _)"
            ),
        ))
    }
}

/// A principal: 1 to 256 bytes.
pub fn validate_principal(principal: &str) -> Result<(), StoreError> {
    if principal.is_empty() {
        return Err(StoreError::invalid(
            "principal",
            "must not be empty when given",
        ));
    }
    if principal.len() > MAX_PRINCIPAL_BYTES {
        return Err(StoreError::invalid(
            "principal",
            format!(
                "{} bytes exceeds the limit of {MAX_PRINCIPAL_BYTES}",
                principal.len()
            ),
        ));
    }
    Ok(())
}

/// The kind a put gets when none is given: the id's prefix before the first `-`.
pub fn default_kind(id: &str) -> Result<Kind, StoreError> {
    let prefix = id.split('-').next().unwrap_or_default();
    validate_kind(prefix).map_err(|_| {
        StoreError::invalid(
            "kind",
            "not given, and the id's prefix before the first '-' is not an upper-case word",
        )
    })?;
    Ok(Kind::from(prefix))
}

impl Limits {
    pub fn validate_payload(&self, payload: &[u8]) -> Result<(), StoreError> {
        if payload.len() > self.max_payload_bytes {
            return Err(StoreError::invalid(
                "payload",
                format!(
                    "{} bytes exceeds max_payload_bytes = {}",
                    payload.len(),
                    self.max_payload_bytes
                ),
            ));
        }
        Ok(())
    }

    pub fn validate_ttl(&self, ttl_ms: Millis) -> Result<(), StoreError> {
        let max_ms = self.max_ttl.as_millis() as Millis;
        if ttl_ms == 0 {
            return Err(StoreError::invalid("ttl", "must be more than 0"));
        }
        if ttl_ms > max_ms {
            return Err(StoreError::invalid(
                "ttl",
                format!("{ttl_ms} ms exceeds max_ttl = {max_ms} ms"),
            ));
        }
        Ok(())
    }
}

/// Idle timeout: more than 0 and at most the ttl.
pub fn validate_idle(idle_ms: Millis, ttl_ms: Millis) -> Result<(), StoreError> {
    if idle_ms == 0 {
        return Err(StoreError::invalid(
            "idle",
            "must be more than 0 (omit it for no idle timeout)",
        ));
    }
    if idle_ms > ttl_ms {
        return Err(StoreError::invalid(
            "idle",
            format!("{idle_ms} ms exceeds the ticket's ttl of {ttl_ms} ms"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_printable_ascii_without_whitespace() {
        assert!(validate_id("id", "ST-1-Zx8k-cas01").is_ok());
        assert!(validate_id("id", &"a".repeat(256)).is_ok());
        for bad in ["", "a b", "tab\t", "é", "\u{7f}"] {
            assert!(validate_id("id", bad).is_err(), "{bad:?}");
        }
        let err = validate_id("id", &"a".repeat(257)).unwrap_err().to_string();
        assert!(err.contains("id") && err.contains("256"), "{err}");
    }

    #[test]
    fn kinds_default_to_the_id_prefix() {
        assert_eq!(default_kind("TGT-1-abc").unwrap(), "TGT");
        assert_eq!(default_kind("PGT").unwrap(), "PGT");
        assert!(default_kind("st-1").is_err());
        assert!(default_kind("-1").is_err());
        assert!(validate_kind("OC_2").is_ok());
        assert!(validate_kind("2FA").is_err());
    }

    /// Nodes compare identities (so kinds) to merge deterministically: a kind
    /// must order and compare as its text, stored as a table index or not.
    #[test]
    fn kinds_compare_as_their_text() {
        let kinds = ["AT", "OC", "OTHER", "PGT", "PGTIOU", "ST", "TGT", "ZZ"];
        for a in kinds {
            assert_eq!(Kind::from(a).as_str(), a);
            assert_eq!(Kind::from(a), Kind::from(a.to_owned()));
            for b in kinds {
                assert_eq!(Kind::from(a).cmp(&Kind::from(b)), a.cmp(b), "{a} {b}");
            }
        }
        assert!(matches!(Kind::from("TGT"), Kind::WellKnown(_)));
        assert!(matches!(Kind::from("OTHER"), Kind::Other(_)));
    }

    #[test]
    fn limits_name_field_and_limit() {
        let limits = Limits {
            max_payload_bytes: 4,
            max_ttl: Duration::from_secs(10),
        };
        let err = limits.validate_payload(b"12345").unwrap_err().to_string();
        assert!(err.contains("payload") && err.contains("max_payload_bytes = 4"));
        assert!(limits.validate_ttl(0).is_err());
        assert!(limits.validate_ttl(10_000).is_ok());
        let err = limits.validate_ttl(10_001).unwrap_err().to_string();
        assert!(err.contains("ttl") && err.contains("10000"), "{err}");
        assert!(validate_idle(5, 4).is_err());
        assert!(validate_idle(4, 4).is_ok());
    }
}
