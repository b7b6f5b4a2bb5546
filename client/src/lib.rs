//! Async Rust client for Tessera, a replicated ticket store used as the ticket
//! registry of SSO servers such as Apereo CAS.
//!
//! It wraps the `tessera.v1.TicketStore` gRPC API with plain Rust types
//! ([`Ticket`], [`NewTicket`], [`Error`]), a timeout on every call, and failover
//! across the nodes of a cluster.
//!
//! ```no_run
//! use std::time::Duration;
//! use tessera_client::{Client, NewTicket};
//!
//! # async fn run() -> Result<(), tessera_client::Error> {
//! let client = Client::connect(["10.0.0.1:7070", "10.0.0.2:7070"]).await?;
//!
//! // A login session and a service ticket granted by it, usable once.
//! client
//!     .put(NewTicket::new("TGT-1-abc", Duration::from_secs(8 * 3600))
//!         .principal("casuser")
//!         .idle(Duration::from_secs(2 * 3600))
//!         .payload(b"serialized TGT".to_vec()))
//!     .await?;
//! client
//!     .put(NewTicket::new("ST-1-def", Duration::from_secs(10))
//!         .parent("TGT-1-abc")
//!         .max_uses(1))
//!     .await?;
//!
//! // Service validation: the first consume succeeds, any later one is NotFound.
//! let st = client.consume("ST-1-def").await?;
//! assert_eq!(st.uses, 1);
//! match client.consume("ST-1-def").await {
//!     Err(e) if e.is_not_found() => {}
//!     other => panic!("ticket validated twice: {other:?}"),
//! }
//!
//! // Logout: the TGT and every ticket it granted.
//! client.delete("TGT-1-abc").await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Connections
//!
//! [`Client::connect`] takes one or more node addresses (`host:port`,
//! `http://host:port`, or `https://host:port` for a node serving TLS), checks
//! their syntax, and opens one HTTP/2 connection per node lazily, on first use.
//! A node that is down at start-up is therefore not an error; calls report it
//! instead. [`Client`] is cheap to clone and `Send + Sync`: create one and
//! share it. `https://` nodes are checked against [`ClientConfig::tls`]
//! ([`ClientTls`]: a CA certificate, else the system's roots, and a client
//! certificate for nodes that require one); a node whose certificate does not
//! check fails the call with [`Error::Unavailable`] naming the reason.
//!
//! # Batching
//!
//! The ticket calls (put, get, touch, consume, update, delete) of concurrent
//! callers sharing a [`Client`] travel together: each node has one batcher task
//! that sends what is queued as one `Batch` RPC whenever one of its two slots is
//! free. A call made alone goes out at once, in a batch of one; under load, the
//! calls queued while earlier batches are on the wire share the next one and its
//! per-RPC cost. Each call still gets exactly the answer (or the failure) its own
//! RPC would have had, and fails over by the rules below. So share one `Client`
//! across a process's request threads rather than creating one per thread. A
//! node of a version without `Batch` is sent single RPCs.
//!
//! # Timeouts
//!
//! Every attempt of a call is bounded by [`ClientConfig::call_timeout`] (5 s by
//! default; [`Client::with_timeout`] gives a handle with another one). The
//! deadline is sent to the server as `grpc-timeout`, so it stops working on calls
//! the client has given up on, and is also enforced locally, so a node that
//! accepted the connection and then hung can not hang the caller. Connecting is
//! bounded by [`ClientConfig::connect_timeout`] (2 s). A call that fails over may
//! take up to one call timeout per address tried.
//!
//! # Failover
//!
//! Calls go first to the node that answered last (initially the first address).
//! When a node can not be reached, the call moves on to the next address, in
//! order, trying each at most once, and the node that answers becomes the
//! preferred one. Which failures move on depends on whether the call is
//! idempotent, that is, whether doing it twice is the same as doing it once:
//!
//! - **Idempotent calls** (`get`, `count`, `sessions_for`, `members`, `list`
//!   until its first ticket arrived, `delete`, `delete_all`, `delete_for`, `put`
//!   without `create_only`, `update` without `if_version`) move on after any
//!   sign that the node did not answer: `UNAVAILABLE`, a timeout, or a broken
//!   connection.
//! - **Non-idempotent calls** (`consume`, `touch`, `put` with `create_only`,
//!   `update` with `if_version`) move on only when the first node provably did
//!   not act on the request: the connection could not be established (refused,
//!   unroutable, connect timeout), or the node answered `UNAVAILABLE` with a
//!   message starting with `draining` or `fenced` (a node that is shutting down,
//!   or whose clock disagrees with most of its peers, refuses every call before
//!   touching any ticket).
//!
//! Why the difference: after a timeout or a connection lost mid-call, the
//! request may have been applied even though no answer arrived. Repeating a
//! `consume` on another node would then count the use twice: a service ticket
//! with `max_uses = 1` would be used up by a validation the caller never saw
//! succeed, and the user's login would fail. Such calls return
//! [`Error::Timeout`] / [`Error::Unavailable`] instead, and the caller (who knows
//! what the call was for) decides. Answers such as `NOT_FOUND`,
//! `ALREADY_EXISTS` or `UNAUTHENTICATED` are answers, not failures, and never
//! fail over.
//!
//! # Authentication
//!
//! A node with peers requires the cluster's API token on every call; set it in
//! [`ClientConfig::token`] and the client sends it as the gRPC metadata
//! `authorization: Bearer <token>`. Without it, or with a wrong one, calls fail
//! with [`Error::Unauthenticated`] and change nothing. The token crosses the
//! network in cleartext (this client has no TLS), so keep the API on a private
//! network. `Debug` of [`ClientConfig`] and [`Client`] never shows the token.
//!
//! ```no_run
//! # async fn run() -> Result<(), tessera_client::Error> {
//! use tessera_client::{Client, ClientConfig};
//!
//! let token = std::env::var("TESSERA_API_TOKEN").ok();
//! let config = ClientConfig { token, ..ClientConfig::default() };
//! let client = Client::connect_with(["10.0.0.1:7070", "10.0.0.2:7070"], config).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Errors and logging
//!
//! [`Error`] has a variant per outcome a registry must handle (`NotFound`,
//! `AlreadyExists`, `VersionMismatch`, ...), each keeping the server's message.
//! Ticket ids and payloads are bearer credentials, so the `Debug` output of
//! [`Ticket`] and [`NewTicket`] shows only a short id prefix and the payload's
//! length.
#![warn(missing_docs)]

mod addr;
mod batch;
mod client;
mod convert;
mod error;
mod failover;
mod session;
mod stream;
mod types;
mod watch;

#[cfg(test)]
mod tests;

pub use client::{Client, ClientConfig, ClientTls};
pub use error::Error;
pub use stream::TicketStream;
/// A node's counters, as [`Client::stats`] returns them (the wire message itself:
/// fields are only ever added).
pub use tessera_proto::v1::NodeStats;
pub use types::{Counts, ListFilter, Member, NewTicket, Ticket, TicketUpdate};
pub use watch::{EventCause, EventStream, EventType, TicketEvent, WatchFilter, WatchItem};

/// The generated protobuf types, for callers that need the raw API.
pub use tessera_proto as proto;
