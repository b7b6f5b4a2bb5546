//! Anti-entropy digests: every id falls in one of [`BUCKETS`] buckets; each
//! bucket's digest is the XOR of its entries' digests, kept up to date on every
//! change, so two nodes find the buckets where they differ by comparing 256
//! numbers instead of every ticket.
//!
//! Both functions must give the same answer on every node and every version
//! that shares a cluster: they use FNV-1a and BLAKE3 over a fixed encoding,
//! never a hasher whose output may change between Rust releases.

use crate::entry::{Entry, State};

/// Number of digest buckets.
pub const BUCKETS: usize = 256;

/// The bucket of a ticket id (FNV-1a 64).
pub fn bucket_of(id: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % BUCKETS as u64) as usize
}

/// Digest of one entry: changes whenever its state does. Stamps stand for the
/// values they were written with (a stamp is unique per write), so payload
/// bytes are not hashed.
pub fn entry_digest(id: &str, entry: &Entry) -> u64 {
    // The fields are encoded into one buffer and hashed in one call: the same
    // bytes (so the same digest) as feeding them one by one, at a fraction of
    // the cost (BLAKE3 has a fixed cost per `update`).
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    encode_fields(id, entry, &mut |bytes: &[u8]| {
        buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        buf.extend_from_slice(bytes);
    });
    let hash = blake3::hash(&buf);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// The fields a digest covers, in order; each is hashed as its length (u64
/// little-endian) followed by its bytes.
fn encode_fields(id: &str, entry: &Entry, field: &mut dyn FnMut(&[u8])) {
    field(id.as_bytes());
    field(&entry.retain_until_ms.to_le_bytes());
    match &entry.state {
        State::Deleted => field(b"deleted"),
        State::Live(inc) => {
            field(b"live");
            for stamp in [&inc.created, &inc.payload.marker] {
                field(&stamp.hlc.wall_ms.to_le_bytes());
                field(&stamp.hlc.logical.to_le_bytes());
                field(stamp.node.as_bytes());
            }
            field(&inc.last_used.0.to_le_bytes());
            for (node, uses) in inc.uses.iter() {
                field(node.as_bytes());
                field(&uses.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        // Fixed values: a change here breaks mixed-version clusters.
        assert_eq!(bucket_of(""), (0xcbf2_9ce4_8422_2325u64 % 256) as usize);
        let mut seen = [0usize; BUCKETS];
        for n in 0..25_600 {
            seen[bucket_of(&format!("ST-{n}-abc"))] += 1;
        }
        assert!(seen.iter().all(|&count| count > 40), "{seen:?}");
    }

    /// The digest as it was first defined (one `update` per length and field):
    /// nodes of different versions must agree on it.
    fn digest_field_by_field(id: &str, entry: &Entry) -> u64 {
        let mut hasher = blake3::Hasher::new();
        encode_fields(id, entry, &mut |bytes: &[u8]| {
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        });
        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    #[test]
    fn one_buffer_hashes_like_field_by_field() {
        use crate::clock::{Hlc, Stamp};
        use crate::entry::{Identity, Payload};
        let stamp = Stamp {
            hlc: Hlc {
                wall_ms: 1_700_000_000_000,
                logical: 3,
            },
            node: "node-a".into(),
        };
        let identity = Identity {
            kind: "TGT".into(),
            principal: Some("alice".into()),
            parent: None,
            created_at_ms: 1_700_000_000_000,
            deadline_ms: 1_700_000_100_000,
            max_uses: 0,
        };
        let payload = Payload {
            bytes: crate::entry::owned_bytes(b"payload"),
            idle_ms: Some(5_000),
        };
        let live = Entry::create(stamp, identity, payload, 1_000);
        for (id, entry) in [("TGT-1-a", &live), ("ST-2-b", &Entry::tombstone(9))] {
            assert_eq!(entry_digest(id, entry), digest_field_by_field(id, entry));
        }
    }

    #[test]
    fn digests_follow_state() {
        let tomb = Entry::tombstone(5);
        assert_eq!(entry_digest("a", &tomb), entry_digest("a", &tomb.clone()));
        assert_ne!(entry_digest("a", &tomb), entry_digest("b", &tomb));
        assert_ne!(
            entry_digest("a", &tomb),
            entry_digest("a", &Entry::tombstone(6))
        );
    }
}
