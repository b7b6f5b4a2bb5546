//! Peer-to-peer messaging between nodes.
//!
//! Replication talks to peers only through [`PeerNetwork`] (send a request,
//! await the response) and answers them through [`PeerHandler`]. The real
//! network ([`net::PeerNet`]: Noise-encrypted, length-framed TCP) and the
//! in-memory one used by unit tests ([`mem::MemNetwork`]) both implement it, and
//! both can cut links, so partition scenarios run the same code either way.

mod frame;
mod handshake;
pub mod mem;
pub mod net;

use std::sync::Arc;

use tessera_proto::peer::Hlc as WireHlc;
use tessera_proto::peer::peer_frame::Body;

/// A node's stable name.
pub type NodeId = Arc<str>;

/// Why a call to a peer failed.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    /// The request was never sent: no connection could be made or kept
    /// (down, cut off, refused us). The peer did nothing.
    #[error("peer {0} unreachable: {1}")]
    Unreachable(String, String),
    /// The connection broke after the request was sent: the peer may have
    /// carried it out, and its answer is lost.
    #[error("lost the answer of peer {0}: {1}")]
    Lost(String, String),
    #[error("peer {0} did not answer in time")]
    Timeout(String),
    /// The peer answered with an error (`ErrorReply`).
    #[error("peer {peer} failed the request: {message}")]
    Remote {
        peer: String,
        code: u32,
        message: String,
    },
    /// The peer answered something that makes no sense for the request.
    #[error("peer {0} broke the protocol: {1}")]
    Protocol(String, String),
}

/// Answers requests from peers (implemented by replication).
#[async_trait::async_trait]
pub trait PeerHandler: Send + Sync + 'static {
    /// Handle one request body and produce the response body.
    async fn handle(&self, from: NodeId, body: Body) -> Body;
    /// This node's clock, stamped on every frame sent.
    fn clock_reading(&self) -> ClockReading;
    /// A peer's clock, read off every frame received.
    fn observe_clock(&self, from: &NodeId, remote: ClockReading);
}

/// What a frame says of its sender's clock: its HLC, which stamps follow, and
/// its physical reading, on which skew is judged (within the budget an HLC
/// follows the fastest clock it has heard, so HLCs cannot tell whose clock is
/// off). `physical_ms` is `None` from nodes older than the field.
#[derive(Clone, Debug, PartialEq)]
pub struct ClockReading {
    pub hlc: WireHlc,
    pub physical_ms: Option<u64>,
}

/// Sends requests to peers.
#[async_trait::async_trait]
pub trait PeerNetwork: Send + Sync + 'static {
    /// Send `body` to `to` and await its response body.
    async fn call(&self, to: &NodeId, body: Body) -> Result<Body, PeerError>;
}
