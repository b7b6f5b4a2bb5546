//! Entries and clocks <-> peer protocol messages, in one place. Decoding checks
//! everything a store would rely on: a record from a peer is input like any other.

use std::sync::Arc;

use bytes::Bytes;
use crdts::{LWWReg, VClock};
use tessera_proto::peer::{
    Deleted, EntryRecord, Hlc as WireHlc, LiveEntry, Stamp as WireStamp, entry_record,
};

use crate::clock::{Hlc, Stamp};
use crate::entry::{
    Entry, Identity, Incarnation, MaxReg, Payload, State, StoredDigest, owned_bytes,
};
use crate::ticket;

/// Why a record from a peer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad entry record: {0}")]
pub struct WireError(pub String);

pub fn hlc_to_wire(hlc: Hlc) -> WireHlc {
    WireHlc {
        wall_ms: hlc.wall_ms,
        logical: hlc.logical,
    }
}

pub fn hlc_from_wire(hlc: WireHlc) -> Hlc {
    Hlc {
        wall_ms: hlc.wall_ms,
        logical: hlc.logical,
    }
}

pub fn stamp_to_wire(stamp: &Stamp) -> WireStamp {
    WireStamp {
        hlc: Some(hlc_to_wire(stamp.hlc)),
        node: stamp.node.to_string(),
    }
}

pub fn stamp_from_wire(stamp: Option<WireStamp>, what: &str) -> Result<Stamp, WireError> {
    stamp_from_wire_with(stamp, what, &mut NodeIds::default())
}

/// Node ids met while decoding a batch of records, shared by the entries
/// that carry them: a bucket's thousands of records name the same few
/// writers, and each stamp would otherwise get an allocation of its own
/// (two per entry, kept as long as the entry is).
#[derive(Default)]
pub struct NodeIds(Vec<Arc<str>>);

impl NodeIds {
    /// Ids remembered at most; past them, each stamp allocates as before.
    const MAX: usize = 16;

    fn get(&mut self, node: String) -> Arc<str> {
        if let Some(known) = self.0.iter().find(|known| ***known == *node) {
            return Arc::clone(known);
        }
        let node: Arc<str> = node.into();
        if self.0.len() < Self::MAX {
            self.0.push(Arc::clone(&node));
        }
        node
    }
}

fn stamp_from_wire_with(
    stamp: Option<WireStamp>,
    what: &str,
    nodes: &mut NodeIds,
) -> Result<Stamp, WireError> {
    let stamp = stamp.ok_or_else(|| WireError(format!("{what} stamp missing")))?;
    let hlc = stamp
        .hlc
        .ok_or_else(|| WireError(format!("{what} stamp has no clock")))?;
    if stamp.node.is_empty() || stamp.node.len() > 128 {
        return Err(WireError(format!("{what} stamp has a bad node id")));
    }
    Ok(Stamp {
        hlc: hlc_from_wire(hlc),
        node: nodes.get(stamp.node),
    })
}

pub fn to_record(id: &str, entry: &Entry) -> EntryRecord {
    let state = match &entry.state {
        State::Deleted => entry_record::State::Deleted(Deleted {}),
        State::Live(inc) => entry_record::State::Live(LiveEntry {
            created: Some(stamp_to_wire(&inc.created)),
            kind: inc.identity.kind.to_string(),
            principal: inc.identity.principal.as_deref().map(str::to_owned),
            parent: inc.identity.parent.as_deref().map(str::to_owned),
            created_at_ms: inc.identity.created_at_ms,
            deadline_ms: inc.identity.deadline_ms,
            max_uses: inc.identity.max_uses,
            payload: Bytes::copy_from_slice(&inc.payload.val.bytes),
            idle_ms: inc.payload.val.idle_ms,
            payload_stamp: Some(stamp_to_wire(&inc.payload.marker)),
            last_used_ms: inc.last_used.0,
            uses: inc
                .uses
                .iter()
                .map(|(node, n)| (node.to_string(), n))
                .collect(),
        }),
    };
    EntryRecord {
        id: id.to_owned(),
        retain_until_ms: entry.retain_until_ms,
        state: Some(state),
    }
}

pub fn from_record(record: EntryRecord) -> Result<(String, Entry), WireError> {
    from_record_with(record, &mut NodeIds::default())
}

/// [`from_record`], sharing node ids across the records of one batch.
pub fn from_record_with(
    record: EntryRecord,
    nodes: &mut NodeIds,
) -> Result<(String, Entry), WireError> {
    ticket::validate_id("id", &record.id).map_err(|e| WireError(e.to_string()))?;
    let state = match record.state {
        None => return Err(WireError("no state".into())),
        Some(entry_record::State::Deleted(_)) => State::Deleted,
        Some(entry_record::State::Live(live)) => {
            ticket::validate_kind(&live.kind).map_err(|e| WireError(e.to_string()))?;
            if let Some(parent) = &live.parent {
                ticket::validate_id("parent", parent).map_err(|e| WireError(e.to_string()))?;
            }
            if let Some(principal) = &live.principal {
                ticket::validate_principal(principal).map_err(|e| WireError(e.to_string()))?;
            }
            if live.uses.len() > 1024 {
                return Err(WireError("more than 1024 nodes in the use counter".into()));
            }
            let mut uses = VClock::new();
            for (node, n) in live.uses {
                uses.dots.insert(nodes.get(node), n);
            }
            let uses = uses.into();
            State::Live(Box::new(Incarnation {
                created: stamp_from_wire_with(live.created, "created", nodes)?,
                identity: Identity {
                    kind: live.kind.into(),
                    principal: live.principal.map(Into::into),
                    parent: live.parent.map(Into::into),
                    created_at_ms: live.created_at_ms,
                    deadline_ms: live.deadline_ms,
                    max_uses: live.max_uses,
                },
                payload: LWWReg {
                    val: Payload {
                        bytes: owned_bytes(&live.payload),
                        idle_ms: live.idle_ms,
                    },
                    marker: stamp_from_wire_with(live.payload_stamp, "payload", nodes)?,
                },
                last_used: MaxReg(live.last_used_ms),
                uses,
                stored_digest: StoredDigest::default(),
            }))
        }
    };
    Ok((
        record.id,
        Entry {
            state,
            retain_until_ms: record.retain_until_ms,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, HlcClock};
    use crate::store::{PutTicket, Store, StoreConfig};

    #[tokio::test(start_paused = true)]
    async fn records_round_trip() {
        let store = Store::new(
            StoreConfig::default(),
            HlcClock::new(Clock::starting_at(1_000), "a".into()),
        );
        store
            .put(PutTicket {
                id: "TGT-1".into(),
                principal: Some("alice".into()),
                payload: Bytes::from_static(b"p"),
                ttl_ms: 10_000,
                idle_ms: Some(5_000),
                max_uses: 3,
                ..PutTicket::default()
            })
            .unwrap();
        let touched = store.touch("TGT-1").unwrap().changes;
        let (id, entry) = &touched[0];
        let (back_id, back) = from_record(to_record(id, entry)).unwrap();
        assert_eq!((back_id.as_str(), &back), (&**id, entry));
        let tomb = Entry::tombstone(99);
        assert_eq!(from_record(to_record("ST-1", &tomb)).unwrap().1, tomb);
    }

    /// Records of one batch share their writers' node ids and decode to the
    /// same entries as records decoded one by one.
    #[tokio::test(start_paused = true)]
    async fn a_batch_shares_node_ids() {
        let store = Store::new(
            StoreConfig::default(),
            HlcClock::new(Clock::starting_at(1_000), "node-a".into()),
        );
        let mut records = Vec::new();
        for n in 0..3 {
            let id = format!("ST-{n}");
            store
                .put(PutTicket {
                    id: id.clone(),
                    payload: Bytes::from_static(b"p"),
                    ttl_ms: 10_000,
                    max_uses: 2,
                    ..PutTicket::default()
                })
                .unwrap();
            store.consume(&id).unwrap();
            records.push(to_record(&id, &store.entry(&id).unwrap()));
        }
        let mut nodes = NodeIds::default();
        let batch: Vec<Entry> = records
            .iter()
            .map(|r| from_record_with(r.clone(), &mut nodes).unwrap().1)
            .collect();
        let stamps = |entry: &Entry| -> Vec<Arc<str>> {
            let inc = entry.live().unwrap();
            let mut all = vec![inc.created.node.clone(), inc.payload.marker.node.clone()];
            all.extend(inc.uses.iter().map(|(node, _)| node.clone()));
            all
        };
        let first = stamps(&batch[0]);
        assert_eq!(first.len(), 3, "created, payload and one use");
        for entry in &batch {
            for node in stamps(entry) {
                assert!(Arc::ptr_eq(&node, &first[0]), "one allocation per node id");
            }
        }
        for (record, entry) in records.into_iter().zip(&batch) {
            assert_eq!(&from_record(record).unwrap().1, entry);
        }
    }

    #[test]
    fn bad_records_are_refused() {
        let mut record = to_record("ST-1", &Entry::tombstone(1));
        record.id = "bad id".into();
        assert!(from_record(record).is_err());
        let record = EntryRecord {
            id: "ST-1".into(),
            retain_until_ms: 1,
            state: None,
        };
        assert!(from_record(record).is_err());
    }
}
