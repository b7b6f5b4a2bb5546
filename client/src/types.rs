//! The client's own ticket types, decoupled from the generated protobuf structs.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// A ticket to create (or replace) with [`Client::put`](crate::Client::put).
///
/// Build one with [`NewTicket::new`] and the builder methods; the fields are
/// public for callers that prefer struct literals.
///
/// Its `Debug` output hides the id and payload, which are bearer credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct NewTicket {
    /// Ticket id, e.g. `TGT-1-...` or `ST-1-...`: the credential itself.
    pub id: String,
    /// Kind (upper-case word: TGT, ST, PT, PGT...). When `None` the server uses the
    /// id's prefix before the first `-`.
    pub kind: Option<String>,
    /// Authenticated user, so [`Client::sessions_for`](crate::Client::sessions_for)
    /// and [`Client::delete_for`](crate::Client::delete_for) can find the ticket.
    pub principal: Option<String>,
    /// Id of the granting ticket: the ticket's deadline is capped at its parent's,
    /// and deleting the parent deletes it.
    pub parent: Option<String>,
    /// Opaque data stored with the ticket (the SSO server's serialized ticket).
    pub payload: Bytes,
    /// Time to live: hard deadline from now, never extended. Sent in whole
    /// milliseconds; below 1 ms it becomes 0, which the server rejects.
    pub ttl: Duration,
    /// Sliding idle timeout: the ticket dies once it has not been used for this long.
    pub idle: Option<Duration>,
    /// Uses allowed by [`Client::consume`](crate::Client::consume); 0 = unlimited.
    pub max_uses: u32,
    /// Fail with [`Error::AlreadyExists`](crate::Error::AlreadyExists) instead of
    /// replacing a live ticket with the same id.
    pub create_only: bool,
}

impl NewTicket {
    /// A ticket with this id and time to live, no principal, parent or payload,
    /// unlimited uses, replacing any ticket with the same id.
    pub fn new(id: impl Into<String>, ttl: Duration) -> Self {
        NewTicket {
            id: id.into(),
            kind: None,
            principal: None,
            parent: None,
            payload: Bytes::new(),
            ttl,
            idle: None,
            max_uses: 0,
            create_only: false,
        }
    }

    /// Sets the kind (otherwise derived from the id's prefix by the server).
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Sets the principal (user) the ticket belongs to.
    pub fn principal(mut self, principal: impl Into<String>) -> Self {
        self.principal = Some(principal.into());
        self
    }

    /// Sets the parent (granting) ticket.
    pub fn parent(mut self, parent: impl Into<String>) -> Self {
        self.parent = Some(parent.into());
        self
    }

    /// Sets the opaque payload.
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Sets a sliding idle timeout.
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// Limits the number of successful consumes (0 = unlimited).
    pub fn max_uses(mut self, max_uses: u32) -> Self {
        self.max_uses = max_uses;
        self
    }

    /// Refuses to replace a live ticket with the same id.
    ///
    /// A create-only put is not idempotent (a repeat would report
    /// `AlreadyExists` for the caller's own ticket), so it is retried on another
    /// node only when the first one provably never saw it.
    pub fn create_only(mut self, create_only: bool) -> Self {
        self.create_only = create_only;
        self
    }
}

impl fmt::Debug for NewTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewTicket")
            .field("id", &Redacted(&self.id))
            .field("kind", &self.kind)
            .field("principal", &self.principal)
            .field("parent", &self.parent.as_deref().map(Redacted))
            .field("payload_len", &self.payload.len())
            .field("ttl", &self.ttl)
            .field("idle", &self.idle)
            .field("max_uses", &self.max_uses)
            .field("create_only", &self.create_only)
            .finish()
    }
}

/// Changes for [`Client::update`](crate::Client::update); fields left `None` are
/// unchanged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TicketUpdate {
    /// New payload.
    pub payload: Option<Bytes>,
    /// New idle timeout; `Some(Duration::ZERO)` removes it.
    pub idle: Option<Duration>,
    /// Apply only if the ticket's version is still this one, else
    /// [`Error::VersionMismatch`](crate::Error::VersionMismatch). Such a
    /// compare-and-set update is not idempotent and so is only retried on another
    /// node when the first provably never saw it.
    pub if_version: Option<String>,
}

impl fmt::Debug for TicketUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketUpdate")
            .field("payload_len", &self.payload.as_ref().map(Bytes::len))
            .field("idle", &self.idle)
            .field("if_version", &self.if_version)
            .finish()
    }
}

/// Which tickets [`Client::list`](crate::Client::list) streams; the default is all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only tickets of this kind.
    pub kind: Option<String>,
    /// Only tickets of this principal.
    pub principal: Option<String>,
    /// Stop after this many tickets; 0 = no limit.
    pub limit: u64,
}

/// A live ticket as the store returns it.
///
/// Its `Debug` output shows the kind, at most the first 8 characters of the id
/// and the payload's length, never the full id, parent id or payload: they are
/// bearer credentials and `Debug` output ends up in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Ticket id (the credential).
    pub id: String,
    /// Upper-case kind: TGT, ST, PT, PGT, TST, OC...
    pub kind: String,
    /// User the ticket belongs to, if any.
    pub principal: Option<String>,
    /// Granting ticket, if any.
    pub parent: Option<String>,
    /// Opaque data stored with the ticket.
    pub payload: Bytes,
    /// When this incarnation was created.
    pub created_at: SystemTime,
    /// Hard deadline: created + ttl, capped at the parent's. Never extended.
    pub deadline: SystemTime,
    /// Sliding idle timeout: the ticket dies once now >= `last_used` + idle.
    pub idle: Option<Duration>,
    /// Last touch or consume (creation time if never used).
    pub last_used: SystemTime,
    /// Uses recorded by touch and consume.
    pub uses: u64,
    /// Uses allowed; 0 = unlimited.
    pub max_uses: u32,
    /// Opaque version; changes on every put and update (not on touch / consume).
    /// Pass it as [`TicketUpdate::if_version`] for compare-and-set.
    pub version: String,
}

impl Ticket {
    /// When the ticket stops being valid if it is not used again: the earlier of
    /// the hard deadline and `last_used + idle`.
    pub fn expires_at(&self) -> SystemTime {
        match self.idle.and_then(|idle| self.last_used.checked_add(idle)) {
            Some(idle_end) if idle_end < self.deadline => idle_end,
            _ => self.deadline,
        }
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("kind", &self.kind)
            .field("id", &Redacted(&self.id))
            .field("principal", &self.principal)
            .field("parent", &self.parent.as_deref().map(Redacted))
            .field("payload_len", &self.payload.len())
            .field("created_at", &self.created_at)
            .field("deadline", &self.deadline)
            .field("idle", &self.idle)
            .field("last_used", &self.last_used)
            .field("uses", &self.uses)
            .field("max_uses", &self.max_uses)
            .field("version", &self.version)
            .finish()
    }
}

/// Ticket counts from [`Client::count`](crate::Client::count).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// All live tickets.
    pub total: u64,
    /// Live tickets per kind, sorted by kind.
    pub by_kind: BTreeMap<String, u64>,
}

/// A cluster node as seen by the node that answered
/// [`Client::members`](crate::Client::members).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Stable node id.
    pub node_id: String,
    /// Address clients reach the node's API at.
    pub api_addr: String,
    /// `alive`, `suspect`, `dead` or `draining`.
    pub state: String,
    /// Whether the node serves requests.
    pub ready: bool,
    /// Tessera version the node runs.
    pub version: String,
    /// Tickets the node holds.
    pub tickets: u64,
}

/// Shows at most the first 8 characters of a credential, and never more than
/// half of it (so a short id is not printed whole), followed by `…`.
pub(crate) struct Redacted<'a>(pub(crate) &'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = (self.0.chars().count() / 2).min(8);
        let prefix: String = self.0.chars().take(shown).collect();
        write!(f, "\"{}…\"", prefix.escape_debug())
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    const ID: &str = "ST-1-zq8K3vYw7TgL0pFx2Nm4RbHs-cas01";
    const PARENT: &str = "TGT-1-Pq0Wn3Ks9XbV2yRt7LmE5cJd-cas01";
    const SECRET: &[u8] = b"serialized-credential-SECRETPAYLOAD";

    fn ticket() -> Ticket {
        Ticket {
            id: ID.to_owned(),
            kind: "ST".to_owned(),
            principal: Some("casuser".to_owned()),
            parent: Some(PARENT.to_owned()),
            payload: Bytes::from_static(SECRET),
            created_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            deadline: UNIX_EPOCH + Duration::from_secs(1_700_000_010),
            idle: None,
            last_used: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            uses: 0,
            max_uses: 1,
            version: "v1".to_owned(),
        }
    }

    fn assert_no_leak(shown: &str) {
        assert!(!shown.contains(ID), "full id leaked: {shown}");
        assert!(!shown.contains(PARENT), "full parent leaked: {shown}");
        assert!(
            !shown.contains("zq8K3vYw"),
            "id beyond 8 chars leaked: {shown}"
        );
        assert!(!shown.contains("SECRET"), "payload leaked: {shown}");
        assert!(!shown.contains("115"), "payload bytes leaked: {shown}");
    }

    #[test]
    fn ticket_debug_hides_id_and_payload() {
        let shown = format!("{:?}", ticket());
        assert_no_leak(&shown);
        assert!(shown.contains("\"ST-1-zq8…\""), "{shown}");
        assert!(shown.contains("\"TGT-1-Pq…\""), "{shown}");
        assert!(shown.contains("kind: \"ST\""), "{shown}");
        assert!(
            shown.contains(&format!("payload_len: {}", SECRET.len())),
            "{shown}"
        );
        let pretty = format!("{:#?}", ticket());
        assert_no_leak(&pretty);
    }

    #[test]
    fn new_ticket_and_update_debug_hide_secrets() {
        let new = NewTicket::new(ID, Duration::from_secs(10))
            .parent(PARENT)
            .payload(Bytes::from_static(SECRET));
        assert_no_leak(&format!("{new:?}"));
        let update = TicketUpdate {
            payload: Some(Bytes::from_static(SECRET)),
            ..Default::default()
        };
        assert_no_leak(&format!("{update:?}"));
    }

    #[test]
    fn short_ids_are_not_shown_whole() {
        assert_eq!(format!("{:?}", Redacted("ST-1")), "\"ST…\"");
        assert_eq!(format!("{:?}", Redacted("")), "\"…\"");
        assert_eq!(
            format!("{:?}", Redacted("TGT-1-abcdefghij")),
            "\"TGT-1-ab…\""
        );
        assert_eq!(format!("{:?}", Redacted("TGT-1-abcdefgh")), "\"TGT-1-a…\"");
        // Multi-byte characters are cut on character boundaries.
        assert_eq!(format!("{:?}", Redacted("ééééééééééé")), "\"ééééé…\"");
    }

    #[test]
    fn builder_sets_every_field() {
        let t = NewTicket::new("ST-1-x", Duration::from_secs(10))
            .kind("ST")
            .principal("casuser")
            .parent("TGT-1-y")
            .payload(&b"abc"[..])
            .idle(Duration::from_secs(2))
            .max_uses(1)
            .create_only(true);
        assert_eq!(t.id, "ST-1-x");
        assert_eq!(t.kind.as_deref(), Some("ST"));
        assert_eq!(t.principal.as_deref(), Some("casuser"));
        assert_eq!(t.parent.as_deref(), Some("TGT-1-y"));
        assert_eq!(&t.payload[..], b"abc");
        assert_eq!(t.idle, Some(Duration::from_secs(2)));
        assert_eq!(t.max_uses, 1);
        assert!(t.create_only);
    }

    #[test]
    fn expires_at_is_the_earlier_of_deadline_and_idle_end() {
        let mut t = ticket();
        assert_eq!(t.expires_at(), t.deadline);
        t.idle = Some(Duration::from_secs(3));
        assert_eq!(t.expires_at(), t.last_used + Duration::from_secs(3));
        t.idle = Some(Duration::from_secs(60));
        assert_eq!(t.expires_at(), t.deadline);
    }
}
