//! Gossip transport: chitchat's UDP socket, bound before chitchat starts (so a
//! listen port of 0 works and the real port can be advertised), wrapped so
//! tests can drop packets to and from chosen addresses.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use tokio::sync::oneshot;

/// Drops gossip packets to and from chosen addresses, for in-process partition
/// tests. Clones share one set of blocked addresses.
///
/// A membership started with [`super::Membership::start_with_faults`] consults
/// it on every packet: nothing is sent to a blocked address and whatever arrives
/// from one is discarded, so blocking B on A cuts the A-B link both ways as seen
/// from A. To cut a node off completely, block it on every other node and block
/// every other node on it.
#[derive(Clone, Default)]
pub struct GossipFaults {
    blocked: Arc<RwLock<HashSet<SocketAddr>>>,
}

impl GossipFaults {
    pub fn new() -> GossipFaults {
        GossipFaults::default()
    }

    /// Drop every packet to or from `addr` (a peer's gossip address).
    pub fn block(&self, addr: SocketAddr) {
        self.write().insert(addr);
    }

    pub fn unblock(&self, addr: SocketAddr) {
        self.write().remove(&addr);
    }

    pub fn unblock_all(&self) {
        self.write().clear();
    }

    pub fn is_blocked(&self, addr: &SocketAddr) -> bool {
        // Uncontended in production (never written), so a read lock per packet is cheap.
        self.blocked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(addr)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<SocketAddr>> {
        self.blocked.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands chitchat a socket that was opened beforehand. `spawn_chitchat` opens
/// exactly one socket; a second `open` is refused.
pub(super) struct PreparedTransport {
    socket: Mutex<Option<Box<dyn Socket>>>,
}

impl PreparedTransport {
    /// The transport, and what tells when its socket has been closed.
    pub(super) fn new(
        socket: Box<dyn Socket>,
        faults: GossipFaults,
    ) -> (PreparedTransport, SocketClosed) {
        let (closed_tx, closed_rx) = oneshot::channel();
        let socket: Box<dyn Socket> = Box::new(FaultySocket {
            inner: socket,
            faults,
            _on_close: closed_tx,
        });
        let transport = PreparedTransport {
            socket: Mutex::new(Some(socket)),
        };
        (transport, SocketClosed(closed_rx))
    }
}

/// Resolves once the gossip socket is closed. Aborting chitchat's task only
/// schedules its drop (on whichever worker polls it next), so whoever rebinds
/// the port after a crash waits for this first.
pub(super) struct SocketClosed(oneshot::Receiver<()>);

impl SocketClosed {
    pub(super) async fn wait(self) {
        // Never sent: the sender is dropped with the socket.
        let _ = self.0.await;
    }
}

#[async_trait::async_trait]
impl Transport for PreparedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        self.socket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| anyhow::anyhow!("gossip socket for {listen_addr} already handed out"))
    }
}

/// chitchat's socket with packets to or from blocked addresses dropped.
struct FaultySocket {
    inner: Box<dyn Socket>,
    faults: GossipFaults,
    /// Dropped after `inner` (fields drop in order): the port is free by then.
    _on_close: oneshot::Sender<()>,
}

#[async_trait::async_trait]
impl Socket for FaultySocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        if self.faults.is_blocked(&to) {
            // Lost on the way, as UDP may lose it: not an error for chitchat.
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        self.inner.send(to, envelope).await
    }

    /// Cancel-safe as long as the inner `recv` is (chitchat requires both): a
    /// packet is either returned or dropped on purpose, never held across an
    /// await.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let outcome = self.inner.recv().await?;
            if !self.faults.is_blocked(&outcome.from_addr) {
                return Ok(outcome);
            }
        }
    }
}
