//! Every conversion between the generated protobuf types and the client's types.
//!
//! On the wire, times are milliseconds since the Unix epoch and durations whole
//! milliseconds, both `u64`; `optional` proto fields are `Option`s on both sides.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_proto::v1 as pb;

use crate::types::{Counts, ListFilter, Member, NewTicket, Ticket, TicketUpdate};

/// Latest time we build (end of year 9999): every platform's `SystemTime` can
/// hold it, so a corrupt far-future timestamp can't overflow.
const MAX_TIME_SECS: u64 = 253_402_300_799;

/// Milliseconds since the epoch to a time, saturating at year 9999.
pub(crate) fn time_from_ms(ms: u64) -> SystemTime {
    let since_epoch = Duration::from_millis(ms).min(Duration::from_secs(MAX_TIME_SECS));
    UNIX_EPOCH + since_epoch
}

/// A duration in whole milliseconds (truncated), saturating at `u64::MAX`.
///
/// Truncation means a ttl below 1 ms is sent as 0, which the server rejects with
/// its own message instead of the client inventing a 1 ms ticket.
pub(crate) fn duration_to_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn put_request(ticket: NewTicket) -> pb::PutRequest {
    pb::PutRequest {
        id: ticket.id,
        kind: ticket.kind,
        principal: ticket.principal,
        parent: ticket.parent,
        payload: ticket.payload,
        ttl_ms: duration_to_ms(ticket.ttl),
        idle_ms: ticket.idle.map(duration_to_ms),
        max_uses: ticket.max_uses,
        create_only: ticket.create_only,
    }
}

pub(crate) fn update_request(id: &str, update: TicketUpdate) -> pb::UpdateRequest {
    pb::UpdateRequest {
        id: id.to_owned(),
        payload: update.payload,
        idle_ms: update.idle.map(duration_to_ms),
        if_version: update.if_version,
    }
}

pub(crate) fn list_request(filter: ListFilter) -> pb::ListRequest {
    pb::ListRequest {
        kind: filter.kind,
        principal: filter.principal,
        limit: filter.limit,
    }
}

impl From<pb::Ticket> for Ticket {
    fn from(t: pb::Ticket) -> Self {
        Ticket {
            id: t.id,
            kind: t.kind,
            principal: t.principal,
            parent: t.parent,
            payload: t.payload,
            created_at: time_from_ms(t.created_at_ms),
            deadline: time_from_ms(t.deadline_ms),
            idle: t.idle_ms.map(Duration::from_millis),
            last_used: time_from_ms(t.last_used_ms),
            uses: t.uses,
            max_uses: t.max_uses,
            version: t.version,
        }
    }
}

impl From<pb::CountResponse> for Counts {
    fn from(c: pb::CountResponse) -> Self {
        Counts {
            total: c.total,
            by_kind: c.by_kind.into_iter().collect(),
        }
    }
}

impl From<pb::Member> for Member {
    fn from(m: pb::Member) -> Self {
        Member {
            node_id: m.node_id,
            api_addr: m.api_addr,
            state: m.state,
            ready: m.ready,
            version: m.version,
            tickets: m.tickets,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn new_ticket_becomes_put_request() {
        let req = put_request(
            NewTicket::new("ST-1-abc", Duration::from_millis(10_500))
                .principal("casuser")
                .parent("TGT-1-def")
                .payload(Bytes::from_static(b"p"))
                .idle(Duration::from_secs(2))
                .max_uses(1)
                .create_only(true),
        );
        assert_eq!(
            req,
            pb::PutRequest {
                id: "ST-1-abc".into(),
                kind: None,
                principal: Some("casuser".into()),
                parent: Some("TGT-1-def".into()),
                payload: Bytes::from_static(b"p"),
                ttl_ms: 10_500,
                idle_ms: Some(2_000),
                max_uses: 1,
                create_only: true,
            }
        );
    }

    #[test]
    fn durations_truncate_to_milliseconds_and_saturate() {
        assert_eq!(duration_to_ms(Duration::from_micros(999)), 0);
        assert_eq!(duration_to_ms(Duration::from_micros(1_999)), 1);
        assert_eq!(duration_to_ms(Duration::MAX), u64::MAX);
        let req = put_request(NewTicket::new("x", Duration::from_nanos(10)));
        assert_eq!(req.ttl_ms, 0);
    }

    #[test]
    fn update_keeps_absent_fields_absent_and_zero_idle_removes() {
        let req = update_request("TGT-1", TicketUpdate::default());
        assert_eq!(req.payload, None);
        assert_eq!(req.idle_ms, None);
        assert_eq!(req.if_version, None);
        let req = update_request(
            "TGT-1",
            TicketUpdate {
                payload: Some(Bytes::from_static(b"")),
                idle: Some(Duration::ZERO),
                if_version: Some("v7".into()),
            },
        );
        assert_eq!(req.id, "TGT-1");
        assert_eq!(req.payload, Some(Bytes::new()));
        assert_eq!(req.idle_ms, Some(0));
        assert_eq!(req.if_version.as_deref(), Some("v7"));
    }

    #[test]
    fn proto_ticket_becomes_ticket() {
        let t = Ticket::from(pb::Ticket {
            id: "TGT-1-x".into(),
            kind: "TGT".into(),
            principal: None,
            parent: None,
            payload: Bytes::from_static(b"data"),
            created_at_ms: 1_700_000_000_123,
            deadline_ms: 1_700_000_028_123,
            idle_ms: Some(7_200_000),
            last_used_ms: 1_700_000_001_000,
            uses: 3,
            max_uses: 0,
            version: "v9".into(),
        });
        assert_eq!(
            t.created_at,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
        assert_eq!(
            t.deadline,
            UNIX_EPOCH + Duration::from_millis(1_700_000_028_123)
        );
        assert_eq!(
            t.last_used,
            UNIX_EPOCH + Duration::from_millis(1_700_000_001_000)
        );
        assert_eq!(t.idle, Some(Duration::from_secs(7_200)));
        assert_eq!((t.uses, t.max_uses, t.version.as_str()), (3, 0, "v9"));
        assert_eq!(t.principal, None);
        assert_eq!(&t.payload[..], b"data");
    }

    #[test]
    fn absurd_times_saturate_instead_of_panicking() {
        assert_eq!(
            time_from_ms(u64::MAX),
            UNIX_EPOCH + Duration::from_secs(MAX_TIME_SECS)
        );
        assert_eq!(time_from_ms(0), UNIX_EPOCH);
    }

    #[test]
    fn counts_are_sorted_by_kind() {
        let counts = Counts::from(pb::CountResponse {
            total: 3,
            by_kind: [("TGT".to_owned(), 1), ("ST".to_owned(), 2)].into(),
        });
        assert_eq!(counts.total, 3);
        assert_eq!(
            counts.by_kind.into_iter().collect::<Vec<_>>(),
            vec![("ST".to_owned(), 2), ("TGT".to_owned(), 1)]
        );
    }

    #[test]
    fn member_fields_carry_over() {
        let m = Member::from(pb::Member {
            node_id: "n1".into(),
            api_addr: "10.0.0.1:7070".into(),
            state: "alive".into(),
            ready: true,
            version: "0.1.0".into(),
            tickets: 42,
        });
        assert_eq!(m.node_id, "n1");
        assert_eq!(m.api_addr, "10.0.0.1:7070");
        assert_eq!(m.state, "alive");
        assert!(m.ready);
        assert_eq!(m.version, "0.1.0");
        assert_eq!(m.tickets, 42);
    }
}
