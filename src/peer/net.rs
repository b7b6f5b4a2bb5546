//! The real peer network: Noise-encrypted, length-framed TCP.
//!
//! One TCP connection per pair of nodes carries requests both ways. Whoever
//! needs it first dials it (lazily, on the first [`PeerNetwork::call`]); a
//! connection accepted from a node is used for our calls to that node too.
//! Requests are pipelined: each carries a `request_id`, unique among the
//! requests its sender has in flight on that connection, and the response
//! echoes it, so any number of calls share the connection and answers may come
//! back in any order.
//!
//! Each connection is one task: it reads frames (never blocking on anything
//! but the socket, so responses are always read even when request handlers are
//! busy) and writes the frames queued to it on a bounded channel, so frames are
//! never interleaved. Inbound requests run as their own tasks, at most
//! [`MAX_INBOUND_REQUESTS`] per connection; callers keep at most
//! [`MAX_OUTSTANDING_CALLS`] requests in flight per connection, below that
//! bound, so a well-behaved peer is never refused.
//!
//! When two nodes dial each other at the same moment, both keep the connection
//! dialed by the node with the smaller id and stop sending new requests on the
//! other, which closes once it has gone quiet (in-flight calls on it finish).
//!
//! Nothing here retries a failed call: replication decides what to retry. A
//! call fails with [`PeerError::Unreachable`] when its request was never
//! sent (no connection could be had, or it closed first), and with
//! [`PeerError::Lost`] when the connection broke once the request was on its
//! way (the peer may have carried it out); the next call dials again.
//!
//! Logs never show frame contents (they carry ticket ids and payloads): only
//! node ids, addresses, sizes and reasons.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use prost::Message;
use tessera_proto::peer::peer_frame::Body;
use tessera_proto::peer::{ErrorReply, Hello, PeerFrame};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

use super::frame::{FrameError, Opener, Sealer};
use super::handshake::{self, Established, Role};
use super::{ClockReading, NodeId, PeerError, PeerHandler, PeerNetwork};

/// Requests this node keeps in flight on one connection; more calls wait.
pub const MAX_OUTSTANDING_CALLS: usize = 256;
/// Requests from a peer handled at once on one connection; beyond that the
/// peer gets a `RESOURCE_EXHAUSTED` error reply. Above
/// [`MAX_OUTSTANDING_CALLS`] so that a peer whose calls timed out (and so no
/// longer counts them) is not refused while we finish its old requests.
pub const MAX_INBOUND_REQUESTS: usize = 384;
/// Frames queued for one connection's writer.
const WRITE_QUEUE: usize = 1024;
/// The writer gathers queued frames into one socket write up to this size.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Inbound connections still in their handshake, at most; more are dropped.
const MAX_PENDING_HANDSHAKES: usize = 256;
/// At most one warning per remote IP in this window (the rest are counted and
/// reported with the next warning).
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Remote IPs the warning limiter remembers at most.
const MAX_WARN_IPS: usize = 4096;
/// A superseded connection closes once idle and silent for this long.
const DRAIN_QUIET: Duration = Duration::from_millis(500);
const DRAIN_CHECK: Duration = Duration::from_millis(100);

/// Settings of a [`PeerNet`].
#[derive(Clone)]
pub struct PeerNetConfig {
    pub node_id: NodeId,
    /// Start time of this run, ns since epoch (a restart is a new generation).
    pub generation: u64,
    /// Where to listen for peers (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Noise pre-shared key, from `ClusterSecret::peer_psk()`.
    pub psk: [u8; 32],
    /// Largest encoded `PeerFrame` accepted or sent.
    pub max_frame_bytes: usize,
    /// Bound on a whole call, dialing included.
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    /// Bound on the Noise handshake plus the `Hello` exchange.
    pub handshake_timeout: Duration,
}

impl PeerNetConfig {
    /// A config with the default timeouts (call 3 s, connect 1 s, handshake 2 s).
    pub fn new(
        node_id: NodeId,
        generation: u64,
        listen: SocketAddr,
        psk: [u8; 32],
        max_frame_bytes: usize,
    ) -> PeerNetConfig {
        PeerNetConfig {
            node_id,
            generation,
            listen,
            psk,
            max_frame_bytes,
            call_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for PeerNetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerNetConfig")
            .field("node_id", &self.node_id)
            .field("generation", &self.generation)
            .field("listen", &self.listen)
            .field("psk", &"..")
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// Counters of a [`PeerNet`] since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Connections opened (Noise handshake and `Hello` exchange both passed).
    pub handshakes_ok: u64,
    /// Connections refused while opening: wrong secret, garbage, timeout,
    /// other protocol generation, a blocked or self node, too many at once.
    pub handshakes_rejected: u64,
    /// Frames refused on open connections (too large, malformed, failed to
    /// decrypt or decode); each closed its connection.
    pub frames_rejected: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Calls that returned an error.
    pub calls_failed: u64,
    /// Responses that matched no call in flight (mostly calls that timed out).
    pub responses_dropped: u64,
    /// Requests answered `RESOURCE_EXHAUSTED` because the peer had too many in
    /// flight on one connection.
    pub requests_refused: u64,
}

#[derive(Default)]
struct Counters {
    handshakes_ok: AtomicU64,
    handshakes_rejected: AtomicU64,
    frames_rejected: AtomicU64,
    calls_failed: AtomicU64,
    responses_dropped: AtomicU64,
    requests_refused: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unreachable(peer: &str, why: impl Into<String>) -> PeerError {
    PeerError::Unreachable(peer.to_string(), why.into())
}

fn lost(peer: &str, why: impl Into<String>) -> PeerError {
    PeerError::Lost(peer.to_string(), why.into())
}

fn error_body(code: tonic::Code, message: impl Into<String>) -> Body {
    Body::Error(ErrorReply {
        code: code as u32,
        message: message.into(),
    })
}

/// The peer network over TCP. Dropping the last handle shuts it down.
pub struct PeerNet {
    inner: Arc<Inner>,
}

type DialResult = Result<Arc<Conn>, PeerError>;

/// A dial in progress, shared by every call waiting for that peer.
struct Dial {
    id: u64,
    result: Shared<BoxFuture<'static, DialResult>>,
}

struct Inner {
    config: PeerNetConfig,
    handler: Arc<dyn PeerHandler>,
    local_addr: SocketAddr,
    state: Mutex<State>,
    counters: Counters,
    /// Ids of connections and dials.
    next_id: AtomicU64,
    /// Reference point of the connections' `last_rx_us` timestamps.
    epoch: Instant,
    stop: watch::Sender<bool>,
    /// Tasks that own a socket (handshakes, dials, connections) still running.
    live_tasks: watch::Sender<usize>,
    pending_handshakes: Arc<Semaphore>,
    warnings: Mutex<WarnLimiter>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    shut: bool,
    addrs: HashMap<NodeId, SocketAddr>,
    blocked: HashSet<NodeId>,
    /// The connection new calls to a node go to.
    active: HashMap<NodeId, Arc<Conn>>,
    /// Every open connection by id, superseded ones included.
    conns: HashMap<u64, Arc<Conn>>,
    dialing: HashMap<NodeId, Dial>,
}

impl PeerNet {
    /// Listen on `config.listen` and serve peers with `handler`.
    pub async fn start(
        config: PeerNetConfig,
        handler: Arc<dyn PeerHandler>,
    ) -> std::io::Result<Arc<PeerNet>> {
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        info!(node = %config.node_id, addr = %local_addr, "peer network listening");
        let inner = Arc::new(Inner {
            config,
            handler,
            local_addr,
            state: Mutex::new(State::default()),
            counters: Counters::default(),
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
            stop: watch::channel(false).0,
            live_tasks: watch::channel(0).0,
            pending_handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            warnings: Mutex::new(WarnLimiter::default()),
            accept_task: Mutex::new(None),
        });
        let task = tokio::spawn(Arc::clone(&inner).accept_loop(listener));
        *lock(&inner.accept_task) = Some(task);
        Ok(Arc::new(PeerNet { inner }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Where to reach a peer (from membership). Replacing an address drops the
    /// old connection.
    pub fn set_peer_addr(&self, node: NodeId, addr: SocketAddr) {
        let doomed = {
            let mut st = lock(&self.inner.state);
            match st.addrs.insert(Arc::clone(&node), addr) {
                Some(old) if old != addr => {
                    st.dialing.remove(&node);
                    st.take_conns_of(&node)
                }
                _ => Vec::new(),
            }
        };
        for conn in doomed {
            conn.close("peer address changed");
        }
    }

    /// Drop a peer's connections and forget its address.
    pub fn remove_peer(&self, node: &NodeId) {
        let doomed = {
            let mut st = lock(&self.inner.state);
            st.addrs.remove(node);
            st.dialing.remove(node);
            st.take_conns_of(node)
        };
        for conn in doomed {
            conn.close("peer removed");
        }
    }

    /// Test hook: cut the link to `node`. Calls to it fail at once with
    /// `Unreachable`; its connections are closed and new ones refused.
    pub fn block(&self, node: NodeId) {
        let doomed = {
            let mut st = lock(&self.inner.state);
            st.dialing.remove(&node);
            let doomed = st.take_conns_of(&node);
            st.blocked.insert(node);
            doomed
        };
        for conn in doomed {
            conn.close("link blocked");
        }
    }

    /// Test hook: heal the link to `node`.
    pub fn unblock(&self, node: &NodeId) {
        lock(&self.inner.state).blocked.remove(node);
    }

    /// The generation (start time) of the run of `node` we are connected to,
    /// if connected.
    pub fn peer_generation(&self, node: &NodeId) -> Option<u64> {
        let st = lock(&self.inner.state);
        st.active
            .get(node)
            .filter(|c| c.is_open())
            .map(|c| c.generation)
    }

    pub fn stats(&self) -> PeerStats {
        let c = &self.inner.counters;
        let connections_open = lock(&self.inner.state).conns.len() as u64;
        PeerStats {
            handshakes_ok: c.handshakes_ok.load(Ordering::Relaxed),
            handshakes_rejected: c.handshakes_rejected.load(Ordering::Relaxed),
            frames_rejected: c.frames_rejected.load(Ordering::Relaxed),
            connections_open,
            calls_failed: c.calls_failed.load(Ordering::Relaxed),
            responses_dropped: c.responses_dropped.load(Ordering::Relaxed),
            requests_refused: c.requests_refused.load(Ordering::Relaxed),
        }
    }

    /// Stop listening, close every connection and fail the calls in flight;
    /// returns once the sockets are closed (or after a short bound).
    pub async fn shutdown(&self) {
        self.inner.stop_now();
        let accept = lock(&self.inner.accept_task).take();
        if let Some(task) = accept {
            let _ = task.await;
        }
        let mut live = self.inner.live_tasks.subscribe();
        let bound = self.inner.config.handshake_timeout + Duration::from_secs(1);
        let _ = timeout(bound, live.wait_for(|n| *n == 0)).await;
        info!(node = %self.inner.config.node_id, "peer network stopped");
    }
}

impl Drop for PeerNet {
    fn drop(&mut self) {
        self.inner.stop_now();
    }
}

#[async_trait::async_trait]
impl PeerNetwork for PeerNet {
    async fn call(&self, to: &NodeId, body: Body) -> Result<Body, PeerError> {
        let result = self.inner.call(to, body).await;
        if result.is_err() {
            bump(&self.inner.counters.calls_failed);
        }
        result
    }
}

impl State {
    /// Remove every connection to `node` from the tables (the caller closes them).
    fn take_conns_of(&mut self, node: &NodeId) -> Vec<Arc<Conn>> {
        self.active.remove(node);
        let ids: Vec<u64> = self
            .conns
            .values()
            .filter(|c| &c.peer == node)
            .map(|c| c.id)
            .collect();
        ids.iter().filter_map(|id| self.conns.remove(id)).collect()
    }
}

impl Inner {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn our_hello(&self) -> Hello {
        let reading = self.handler.clock_reading();
        Hello {
            node_id: self.config.node_id.to_string(),
            generation: self.config.generation,
            version: handshake::VERSION.to_string(),
            protocol: handshake::PROTOCOL,
            hlc: Some(reading.hlc),
            physical_ms: reading.physical_ms,
        }
    }

    /// Mark the network stopped and close everything (also run on drop).
    fn stop_now(&self) {
        let doomed: Vec<Arc<Conn>> = {
            let mut st = lock(&self.state);
            st.shut = true;
            st.dialing.clear();
            st.active.clear();
            st.conns.drain().map(|(_, c)| c).collect()
        };
        self.stop.send_replace(true);
        for conn in doomed {
            conn.close("shutting down");
        }
    }

    fn task_started(self: &Arc<Self>) -> LiveTask {
        self.live_tasks.send_modify(|n| *n += 1);
        LiveTask(Arc::clone(self))
    }

    /// Log a warning about `remote` unless one was logged for its IP recently
    /// (then only at debug level).
    fn warn_limited(&self, remote: SocketAddr, what: &str, why: &dyn fmt::Display) {
        let admitted = lock(&self.warnings).admit(remote.ip(), Instant::now());
        if let Some(suppressed) = admitted {
            warn!(%remote, reason = %why, suppressed, "{what}");
        } else {
            debug!(%remote, reason = %why, "{what}");
        }
    }

    fn handshake_rejected(&self, remote: SocketAddr, why: &dyn fmt::Display) {
        bump(&self.counters.handshakes_rejected);
        self.warn_limited(
            remote,
            "peer connection refused while opening (wrong cluster secret, not a Tessera peer, or incompatible)",
            why,
        );
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let mut stop = self.stop.subscribe();
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, remote)) => {
                    match Arc::clone(&self.pending_handshakes).try_acquire_owned() {
                        Ok(permit) => {
                            let task = self.task_started();
                            let me = Arc::clone(&self);
                            tokio::spawn(async move {
                                me.accept_conn(stream, remote, permit).await;
                                drop(task);
                            });
                        }
                        Err(_) => {
                            drop(stream);
                            self.handshake_rejected(remote, &"too many handshakes in progress");
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    debug!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        debug!(node = %self.config.node_id, "peer listener closed");
    }

    async fn accept_conn(
        self: Arc<Self>,
        mut stream: TcpStream,
        remote: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) {
        let _ = stream.set_nodelay(true);
        let hello = self.our_hello();
        let opened = timeout(
            self.config.handshake_timeout,
            handshake::establish(&mut stream, Role::Responder, &self.config.psk, &hello),
        )
        .await;
        drop(permit);
        let established = match opened {
            Ok(Ok(established)) => established,
            Ok(Err(e)) => return self.handshake_rejected(remote, &e),
            Err(_) => return self.handshake_rejected(remote, &"handshake timed out"),
        };
        // Refusals are counted and logged inside.
        let _ = self.admit(stream, remote, established, None);
    }

    /// Turn an opened connection into a live one: check who it is from,
    /// register it and start its task. Returns the connection calls to that
    /// peer should use (another one, if this one lost a simultaneous dial).
    fn admit(
        self: &Arc<Self>,
        stream: TcpStream,
        remote: SocketAddr,
        established: Established,
        dialed: Option<(&NodeId, SocketAddr)>,
    ) -> DialResult {
        let Established {
            sealer,
            opener,
            hello,
        } = established;
        let peer: NodeId = Arc::from(hello.node_id.as_str());
        let refuse = |why: String| -> DialResult {
            self.handshake_rejected(remote, &why);
            Err(unreachable(&peer, why))
        };
        if peer == self.config.node_id {
            return refuse("connected to itself (this node's own address)".into());
        }
        if let Some((expected, _)) = dialed
            && &peer != expected
        {
            return refuse(format!(
                "dialed node {expected} but {remote} is node {peer}"
            ));
        }
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer: Arc::clone(&peer),
            generation: hello.generation,
            outbound: dialed.is_some(),
            remote,
            tx,
            calls: Semaphore::new(MAX_OUTSTANDING_CALLS),
            inbound: Arc::new(Semaphore::new(MAX_INBOUND_REQUESTS)),
            pending: Mutex::new(Pending::default()),
            next_request_id: AtomicU64::new(1),
            last_rx_us: AtomicU64::new(self.now_us()),
            phase: watch::channel(Phase::Active).0,
        });
        let (chosen, displaced) = match self.install(&conn, dialed.map(|(_, addr)| addr)) {
            Ok(installed) => installed,
            Err(why) => return refuse(why),
        };
        match displaced {
            Some(Displaced::Restarted(old)) => old.close("peer restarted (new generation)"),
            Some(Displaced::Superseded(old)) => old.supersede(),
            None => {}
        }
        bump(&self.counters.handshakes_ok);
        if let Some(hlc) = hello.hlc {
            let reading = ClockReading {
                hlc,
                physical_ms: hello.physical_ms,
            };
            self.handler.observe_clock(&peer, reading);
        }
        debug!(
            %peer,
            %remote,
            outbound = conn.outbound,
            generation = conn.generation,
            version = %hello.version,
            "peer connection open"
        );
        let task = self.task_started();
        let me = Arc::clone(self);
        let running = Arc::clone(&conn);
        tokio::spawn(async move {
            me.run_conn(running, stream, sealer, opener, rx).await;
            drop(task);
        });
        Ok(chosen)
    }

    /// Register `conn` and decide which connection to `conn.peer` new calls
    /// use. Returns that connection and the one `conn` displaced, if any.
    fn install(
        &self,
        conn: &Arc<Conn>,
        dialed_addr: Option<SocketAddr>,
    ) -> Result<(Arc<Conn>, Option<Displaced>), String> {
        let mut st = lock(&self.state);
        if st.shut {
            return Err("shutting down".into());
        }
        if st.blocked.contains(&conn.peer) {
            return Err("link blocked".into());
        }
        if let Some(addr) = dialed_addr
            && st.addrs.get(&conn.peer) != Some(&addr)
        {
            return Err("peer address changed or removed while dialing".into());
        }
        let current = st.active.get(&conn.peer).filter(|c| c.is_open()).cloned();
        let Some(current) = current else {
            st.active.insert(Arc::clone(&conn.peer), Arc::clone(conn));
            st.conns.insert(conn.id, Arc::clone(conn));
            return Ok((Arc::clone(conn), None));
        };
        if conn.generation != current.generation {
            // A connection from another run of the peer: the old run is gone
            // (a process cannot open connections after it stopped), so the
            // new connection wins whichever clock reading is larger.
            st.conns.insert(conn.id, Arc::clone(conn));
            st.active.insert(Arc::clone(&conn.peer), Arc::clone(conn));
            return Ok((Arc::clone(conn), Some(Displaced::Restarted(current))));
        }
        let new_wins = {
            let our_id = &self.config.node_id;
            let dialer_of =
                |c: &Conn| -> NodeId { Arc::clone(if c.outbound { our_id } else { &c.peer }) };
            let (new_dialer, old_dialer) = (dialer_of(conn), dialer_of(&current));
            // The same node dialing again has given up on its old connection;
            // otherwise both sides keep the one the smaller node id dialed.
            new_dialer <= old_dialer
        };
        st.conns.insert(conn.id, Arc::clone(conn));
        if new_wins {
            st.active.insert(Arc::clone(&conn.peer), Arc::clone(conn));
            Ok((Arc::clone(conn), Some(Displaced::Superseded(current))))
        } else {
            conn.supersede();
            Ok((current, None))
        }
    }

    /// Drop a closed connection from the tables.
    fn forget(&self, conn: &Conn) {
        let mut st = lock(&self.state);
        st.conns.remove(&conn.id);
        if st.active.get(&conn.peer).is_some_and(|c| c.id == conn.id) {
            st.active.remove(&conn.peer);
        }
    }

    async fn call(self: &Arc<Self>, to: &NodeId, body: Body) -> Result<Body, PeerError> {
        let deadline = Instant::now() + self.config.call_timeout;
        let timed_out = || PeerError::Timeout(to.to_string());
        let conn = timeout_at(deadline, self.connection(to))
            .await
            .map_err(|_| timed_out())??;
        let sent_at = self.now_us();
        match timeout_at(deadline, conn.request(body)).await {
            Err(_) => {
                // Nothing at all came back on this connection while we waited:
                // the peer is gone or wedged. Close it so the next call dials
                // afresh instead of queueing behind a dead socket.
                if conn.last_rx_us.load(Ordering::Relaxed) < sent_at {
                    debug!(peer = %conn.peer, "peer silent for a whole call; closing its connection");
                    conn.close("peer silent for a whole call timeout");
                }
                Err(timed_out())
            }
            Ok(Ok(Body::Error(e))) => Err(PeerError::Remote {
                peer: to.to_string(),
                code: e.code,
                message: e.message,
            }),
            Ok(result) => result,
        }
    }

    /// The connection to use for `to`: the open one, or a (shared) new dial.
    async fn connection(self: &Arc<Self>, to: &NodeId) -> DialResult {
        let dial = {
            let mut st = lock(&self.state);
            if st.shut {
                return Err(unreachable(to, "peer network shut down"));
            }
            if st.blocked.contains(to) {
                return Err(unreachable(to, "link blocked"));
            }
            if let Some(conn) = st.active.get(to).filter(|c| c.is_open()) {
                return Ok(Arc::clone(conn));
            }
            match st.dialing.get(to) {
                Some(dial) => dial.result.clone(),
                None => {
                    let Some(&addr) = st.addrs.get(to) else {
                        return Err(unreachable(to, "no known address"));
                    };
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let peer = Arc::clone(to);
                    let task = tokio::spawn(Arc::clone(self).dial(Arc::clone(to), addr, id));
                    let result = task
                        .map(move |joined| {
                            joined.unwrap_or_else(|e| Err(unreachable(&peer, e.to_string())))
                        })
                        .boxed()
                        .shared();
                    st.dialing.insert(
                        Arc::clone(to),
                        Dial {
                            id,
                            result: result.clone(),
                        },
                    );
                    result
                }
            }
        };
        dial.await
    }

    /// Dial `to` at `addr`. Runs as its own task, so a caller giving up does
    /// not abandon the dial for the others waiting on it.
    async fn dial(self: Arc<Self>, to: NodeId, addr: SocketAddr, dial_id: u64) -> DialResult {
        let task = self.task_started();
        let result = self.dial_once(&to, addr).await;
        {
            let mut st = lock(&self.state);
            if st.dialing.get(&to).is_some_and(|d| d.id == dial_id) {
                st.dialing.remove(&to);
            }
        }
        if let Err(e) = &result {
            debug!(peer = %to, %addr, error = %e, "peer dial failed");
        }
        drop(task);
        result
    }

    async fn dial_once(self: &Arc<Self>, to: &NodeId, addr: SocketAddr) -> DialResult {
        let connect = timeout(self.config.connect_timeout, TcpStream::connect(addr)).await;
        let mut stream = match connect {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(unreachable(to, format!("connect to {addr}: {e}"))),
            Err(_) => return Err(unreachable(to, format!("connect to {addr} timed out"))),
        };
        let _ = stream.set_nodelay(true);
        let hello = self.our_hello();
        let opened = timeout(
            self.config.handshake_timeout,
            handshake::establish(&mut stream, Role::Initiator, &self.config.psk, &hello),
        )
        .await;
        let established = match opened {
            Ok(Ok(established)) => established,
            Ok(Err(e)) => {
                self.handshake_rejected(addr, &e);
                return Err(unreachable(to, format!("handshake with {addr}: {e}")));
            }
            Err(_) => {
                self.handshake_rejected(addr, &"handshake timed out");
                return Err(unreachable(to, format!("handshake with {addr} timed out")));
            }
        };
        self.admit(stream, addr, established, Some((to, addr)))
    }

    /// Serve one connection until it ends, then forget it.
    async fn run_conn(
        self: Arc<Self>,
        conn: Arc<Conn>,
        stream: TcpStream,
        sealer: Sealer,
        opener: Opener,
        queue: mpsc::Receiver<Outgoing>,
    ) {
        let (read_half, write_half) = stream.into_split();
        let mut phase = conn.phase.subscribe();
        let reason = tokio::select! {
            biased;
            _ = phase.wait_for(|p| *p == Phase::Closed) => String::from("closed by this node"),
            reason = self.read_loop(&conn, read_half, opener) => reason,
            reason = self.write_loop(&conn, write_half, sealer, queue) => reason,
            reason = self.drain_when_superseded(&conn) => reason,
        };
        conn.close(&reason);
        self.forget(&conn);
        debug!(peer = %conn.peer, remote = %conn.remote, %reason, "peer connection closed");
    }

    async fn read_loop(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        read_half: OwnedReadHalf,
        mut opener: Opener,
    ) -> String {
        let mut reader = BufReader::with_capacity(64 * 1024, read_half);
        let max = self.config.max_frame_bytes;
        loop {
            let bytes = match opener.read_frame(&mut reader, max).await {
                Ok(bytes) => bytes,
                Err(FrameError::Closed) => return "closed by the peer".into(),
                Err(e) if e.is_rejection() => return self.frame_rejected(conn, &e),
                Err(e) => return format!("read failed: {e}"),
            };
            // Decoded from `Bytes`, payloads are slices of the frame, not
            // copies; the store copies each payload it keeps (`owned_bytes`).
            let frame = match PeerFrame::decode(bytes::Bytes::from(bytes)) {
                Ok(frame) => frame,
                Err(e) => return self.frame_rejected(conn, &format!("undecodable frame: {e}")),
            };
            if *conn.phase.borrow() == Phase::Closed {
                // Closed (blocked, removed) while the frame was arriving.
                return "closed by this node".into();
            }
            conn.last_rx_us.store(self.now_us(), Ordering::Relaxed);
            if let Some(hlc) = frame.hlc {
                let reading = ClockReading {
                    hlc,
                    physical_ms: frame.physical_ms,
                };
                self.handler.observe_clock(&conn.peer, reading);
            }
            if frame.is_response {
                if !conn.complete(frame.request_id, frame.body) {
                    bump(&self.counters.responses_dropped);
                }
            } else {
                self.dispatch(conn, frame.request_id, frame.body);
            }
        }
    }

    fn frame_rejected(&self, conn: &Conn, why: &dyn fmt::Display) -> String {
        bump(&self.counters.frames_rejected);
        self.warn_limited(
            conn.remote,
            &format!(
                "frame from peer {} rejected; closing the connection",
                conn.peer
            ),
            why,
        );
        format!("frame rejected: {why}")
    }

    /// Start handling one inbound request. Never waits: the reader must keep
    /// reading (responses to our own calls arrive on the same connection).
    fn dispatch(self: &Arc<Self>, conn: &Arc<Conn>, request_id: u64, body: Option<Body>) {
        let Some(body) = body else {
            conn.respond(
                request_id,
                error_body(tonic::Code::InvalidArgument, "request has no body"),
            );
            return;
        };
        let Ok(permit) = Arc::clone(&conn.inbound).try_acquire_owned() else {
            bump(&self.counters.requests_refused);
            conn.respond(
                request_id,
                error_body(
                    tonic::Code::ResourceExhausted,
                    format!(
                        "more than {MAX_INBOUND_REQUESTS} requests in flight on one connection"
                    ),
                ),
            );
            return;
        };
        let handler = Arc::clone(&self.handler);
        let conn = Arc::clone(conn);
        tokio::spawn(async move {
            let handled = AssertUnwindSafe(handler.handle(Arc::clone(&conn.peer), body))
                .catch_unwind()
                .await;
            let response = handled
                .unwrap_or_else(|_| error_body(tonic::Code::Internal, "request handler panicked"));
            let _ = conn
                .tx
                .send(Outgoing {
                    request_id,
                    is_response: true,
                    body: response,
                    inbound: Some(permit),
                })
                .await;
        });
    }

    async fn write_loop(
        &self,
        conn: &Conn,
        mut write_half: OwnedWriteHalf,
        mut sealer: Sealer,
        mut queue: mpsc::Receiver<Outgoing>,
    ) -> String {
        let mut out = Vec::with_capacity(64 * 1024);
        // Permits of the requests answered in `out`, given back once written.
        let mut answered = Vec::new();
        loop {
            let Some(mut next) = queue.recv().await else {
                return "write queue closed".into();
            };
            // Gather what is queued into one socket write (large frames are
            // written as they are sealed).
            loop {
                answered.extend(next.inbound.take());
                if let Some(plaintext) = self.encode(conn, next) {
                    let sealed = sealer
                        .seal_streaming(&plaintext, &mut out, &mut write_half, WRITE_BATCH_BYTES)
                        .await;
                    if let Err(e) = sealed {
                        return format!("write failed: {e}");
                    }
                }
                if out.len() >= WRITE_BATCH_BYTES {
                    break;
                }
                match queue.try_recv() {
                    Ok(queued) => next = queued,
                    Err(_) => break,
                }
            }
            if !out.is_empty() {
                if let Err(e) = write_half.write_all(&out).await {
                    return format!("write failed: {e}");
                }
                out.clear();
            }
            answered.clear();
            if out.capacity() > 4 * WRITE_BATCH_BYTES {
                out = Vec::with_capacity(64 * 1024);
            }
        }
    }

    /// Stamp and encode one frame. A frame over the size limit is not sent:
    /// a request fails its call (`None`), a response is replaced by an error
    /// reply.
    fn encode(&self, conn: &Conn, message: Outgoing) -> Option<Vec<u8>> {
        let max = self.config.max_frame_bytes;
        let reading = self.handler.clock_reading();
        let mut frame = PeerFrame {
            request_id: message.request_id,
            is_response: message.is_response,
            hlc: Some(reading.hlc),
            physical_ms: reading.physical_ms,
            body: Some(message.body),
        };
        // Encoded first and measured after: `encoded_len` walks every nested
        // record, and encoding walks them all again (an oversized frame is
        // rare, and its encoding no larger than the body already held).
        let encoded = frame.encode_to_vec();
        let len = encoded.len();
        if len <= max {
            return Some(encoded);
        }
        drop(encoded);
        if !message.is_response {
            conn.fail(
                message.request_id,
                PeerError::Protocol(
                    conn.peer.to_string(),
                    format!("request of {len} bytes exceeds the peer frame limit of {max} bytes"),
                ),
            );
            return None;
        }
        warn!(
            peer = %conn.peer,
            len,
            max,
            "response exceeds the peer frame limit; answering an error instead"
        );
        frame.body = Some(error_body(
            tonic::Code::ResourceExhausted,
            format!("response of {len} bytes exceeds the peer frame limit of {max} bytes"),
        ));
        Some(frame.encode_to_vec())
    }

    /// Resolves once `conn` has been superseded and has gone quiet.
    async fn drain_when_superseded(&self, conn: &Conn) -> String {
        let mut phase = conn.phase.subscribe();
        if phase.wait_for(|p| *p != Phase::Active).await.is_err() {
            return "connection dropped".into();
        }
        loop {
            tokio::time::sleep(DRAIN_CHECK).await;
            let last_rx = conn.last_rx_us.load(Ordering::Relaxed);
            let quiet_for = self.now_us().saturating_sub(last_rx);
            if conn.is_idle() && quiet_for >= DRAIN_QUIET.as_micros() as u64 {
                return "superseded by another connection to the same peer".into();
            }
        }
    }
}

/// A connection a newly installed one took the place of.
enum Displaced {
    /// Same run of the peer: let in-flight calls finish, then close.
    Superseded(Arc<Conn>),
    /// An older run of the peer: it is gone, close at once.
    Restarted(Arc<Conn>),
}

/// Keeps [`Inner::live_tasks`] counting a task that owns a socket.
struct LiveTask(Arc<Inner>);

impl Drop for LiveTask {
    fn drop(&mut self) {
        self.0.live_tasks.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A frame queued for a connection's writer.
struct Outgoing {
    request_id: u64,
    is_response: bool,
    body: Body,
    /// The inbound request this answers, held until the response is written:
    /// until then the connection is not idle, so a drain cannot close it
    /// with the response still queued.
    inbound: Option<OwnedSemaphorePermit>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// New calls may use it.
    Active,
    /// Another connection to the same peer took over; closes once quiet.
    Superseded,
    Closed,
}

type Reply = oneshot::Sender<Result<Body, PeerError>>;

#[derive(Default)]
struct Pending {
    /// Set once the connection closed: no new calls are accepted.
    closed: Option<String>,
    calls: HashMap<u64, Reply>,
}

/// One live connection to a peer.
struct Conn {
    id: u64,
    peer: NodeId,
    /// The peer's `Hello.generation`.
    generation: u64,
    /// Whether this node dialed it.
    outbound: bool,
    remote: SocketAddr,
    tx: mpsc::Sender<Outgoing>,
    /// Bounds our requests in flight on this connection.
    calls: Semaphore,
    /// Bounds the peer's requests being handled.
    inbound: Arc<Semaphore>,
    pending: Mutex<Pending>,
    next_request_id: AtomicU64,
    /// When the last frame arrived, in microseconds since [`Inner::epoch`].
    last_rx_us: AtomicU64,
    phase: watch::Sender<Phase>,
}

impl Conn {
    /// New calls may be sent on it.
    fn is_open(&self) -> bool {
        *self.phase.borrow() == Phase::Active
    }

    /// No call of ours waits on it and no request of the peer's is running.
    fn is_idle(&self) -> bool {
        lock(&self.pending).calls.is_empty()
            && self.inbound.available_permits() == MAX_INBOUND_REQUESTS
    }

    fn supersede(&self) {
        self.phase.send_if_modified(|p| {
            if *p == Phase::Active {
                *p = Phase::Superseded;
                true
            } else {
                false
            }
        });
    }

    /// Close the connection and fail every call waiting on it.
    fn close(&self, reason: &str) {
        let waiting = {
            let mut pending = lock(&self.pending);
            if pending.closed.is_some() {
                return;
            }
            pending.closed = Some(reason.to_string());
            std::mem::take(&mut pending.calls)
        };
        self.calls.close();
        self.phase.send_replace(Phase::Closed);
        for (_, reply) in waiting {
            let _ = reply.send(Err(lost(&self.peer, format!("connection lost: {reason}"))));
        }
    }

    /// Send one request and await its response.
    async fn request(&self, body: Body) -> Result<Body, PeerError> {
        let _slot = self
            .calls
            .acquire()
            .await
            .map_err(|_| unreachable(&self.peer, "connection closed"))?;
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if let Some(reason) = &pending.closed {
                return Err(unreachable(
                    &self.peer,
                    format!("connection lost: {reason}"),
                ));
            }
            pending.calls.insert(request_id, reply);
        }
        let _forget = ForgetOnDrop {
            conn: self,
            request_id,
        };
        let message = Outgoing {
            request_id,
            is_response: false,
            body,
            inbound: None,
        };
        if self.tx.send(message).await.is_err() {
            return Err(unreachable(&self.peer, "connection closed"));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(lost(&self.peer, "connection closed")))
    }

    /// Deliver a response; false if no call waits for it.
    fn complete(&self, request_id: u64, body: Option<Body>) -> bool {
        let Some(reply) = lock(&self.pending).calls.remove(&request_id) else {
            return false;
        };
        let result = body.ok_or_else(|| {
            PeerError::Protocol(self.peer.to_string(), "response without a body".into())
        });
        let _ = reply.send(result);
        true
    }

    fn fail(&self, request_id: u64, error: PeerError) {
        if let Some(reply) = lock(&self.pending).calls.remove(&request_id) {
            let _ = reply.send(Err(error));
        }
    }

    /// Queue a response from the reader without waiting for queue space.
    fn respond(self: &Arc<Self>, request_id: u64, body: Body) {
        let message = Outgoing {
            request_id,
            is_response: true,
            body,
            inbound: None,
        };
        if let Err(mpsc::error::TrySendError::Full(message)) = self.tx.try_send(message) {
            let conn = Arc::clone(self);
            tokio::spawn(async move {
                let _ = conn.tx.send(message).await;
            });
        }
    }
}

/// Removes a call from the pending map when it ends early (timeout, cancel).
struct ForgetOnDrop<'a> {
    conn: &'a Conn,
    request_id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        lock(&self.conn.pending).calls.remove(&self.request_id);
    }
}

/// At most one warning per remote IP per [`WARN_INTERVAL`], so a flood of bad
/// connections cannot flood the log.
#[derive(Default)]
struct WarnLimiter {
    /// Per IP: when we last warned, and how many were suppressed since.
    seen: HashMap<IpAddr, (Instant, u64)>,
}

impl WarnLimiter {
    /// `Some(suppressed since last time)` if a warning may be logged now.
    fn admit(&mut self, ip: IpAddr, now: Instant) -> Option<u64> {
        if self.seen.len() >= MAX_WARN_IPS && !self.seen.contains_key(&ip) {
            self.seen
                .retain(|_, (at, _)| now.duration_since(*at) < WARN_INTERVAL);
            if self.seen.len() >= MAX_WARN_IPS {
                // A flood from very many addresses: stay quiet rather than
                // grow without bound (the counters still count it).
                return None;
            }
        }
        match self.seen.get_mut(&ip) {
            Some((at, suppressed)) if now.duration_since(*at) < WARN_INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let count = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(count)
            }
            None => {
                self.seen.insert(ip, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests;
