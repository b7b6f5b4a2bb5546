//! The client: one lazy channel per node, per-call timeouts and failover.

use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tessera_proto::v1 as pb;
use tessera_proto::v1::NodeStats;
use tessera_proto::v1::ticket_store_client::TicketStoreClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use tessera_proto::v1::batch_call::Call;
use tessera_proto::v1::batch_outcome::Outcome;

use crate::addr::parse_address;
use crate::batch::Batcher;
use crate::failover::{Failure, Idempotency, fails_over};
use crate::stream::TicketStream;
use crate::types::{Counts, ListFilter, Member, NewTicket, Ticket, TicketUpdate};
use crate::watch::{EventStream, WatchFilter};
use crate::{Error, convert};

/// Largest message sent or accepted, well above any sane server payload limit, so
/// that the server's own "payload too large" message reaches the caller instead
/// of a generic client-side size error.
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
/// HTTP/2 pings on idle connections, so a dead node is noticed before a call
/// waits on it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Timeouts and credentials for a [`Client`].
///
/// `Debug` shows whether a token is set, never the token.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Longest wait for one attempt of a call on one node (default 5 s). A call
    /// that fails over may take up to this long per address tried. For
    /// [`Client::list`] it bounds each wait for the next ticket.
    pub call_timeout: Duration,
    /// Longest wait for a TCP connection to a node (default 2 s), so an
    /// unroutable node is given up on quickly and the next one tried.
    pub connect_timeout: Duration,
    /// The cluster's API token (default none), sent on every call as the gRPC
    /// metadata `authorization: Bearer <token>`. Nodes with peers require it;
    /// a wrong or missing one gets [`Error::Unauthenticated`]. Surrounding
    /// whitespace (a trailing newline from a file) is ignored; the rest must be
    /// printable ASCII without spaces.
    pub token: Option<String>,
    /// How `https://` addresses are trusted (default: the system's roots, no
    /// client certificate). `http://` addresses ignore it.
    pub tls: ClientTls,
}

/// TLS for `https://` node addresses.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM of the CA certificate(s) that sign the nodes' certificates; none:
    /// the system's trusted roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of this client's certificate chain and private key, for nodes that
    /// require client certificates (mTLS).
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field(
                "identity",
                &self.identity_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            token: None,
            tls: ClientTls::default(),
        }
    }
}

impl ClientConfig {
    /// A gRPC endpoint for `addr` with this configuration's TLS and connect
    /// timeout: the one [`Client`] connects through, for other services of a
    /// node (the CLI's health check uses it for `grpc.health.v1`).
    pub fn endpoint(&self, addr: &str) -> Result<tonic::transport::Endpoint, Error> {
        let address = parse_address(addr)?;
        let endpoint = if address.tls {
            let mut tls = tonic::transport::ClientTlsConfig::new();
            tls = match &self.tls.ca_pem {
                Some(pem) => tls.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &self.tls.identity_pem {
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            address
                .endpoint
                .tls_config(tls)
                .map_err(|e| Error::InvalidAddress(format!("{}: TLS: {e}", address.text)))?
        } else {
            address.endpoint
        };
        Ok(endpoint.connect_timeout(self.connect_timeout))
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// The `authorization` metadata value for a token.
fn bearer(token: &str) -> Result<AsciiMetadataValue, Error> {
    let token = token.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        // Never echo the token: it is a credential.
        return Err(Error::InvalidArgument(
            "API token: must be non-empty printable ASCII without spaces".to_owned(),
        ));
    }
    let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        Error::InvalidArgument("API token: not usable as a header value".to_owned())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// A handle to a Tessera cluster.
///
/// Cheap to clone (clones share the connections and the preferred node) and
/// `Send + Sync`: create one at start-up and share it.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    call_timeout: Duration,
}

struct Shared {
    nodes: Vec<Node>,
    /// `Bearer <token>`, sent with every call, when a token is configured.
    authorization: Option<AsciiMetadataValue>,
    /// Index of the node tried first: the last one that answered.
    preferred: AtomicUsize,
}

struct Node {
    /// Normalized address, for messages.
    addr: String,
    /// For the calls that are not batched (admin calls, listings).
    grpc: TicketStoreClient<Channel>,
    /// For the ticket calls: put, get, touch, consume, update, delete.
    batcher: Batcher,
}

impl Client {
    /// Connects to a cluster through the given nodes with the default
    /// [`ClientConfig`]. See [`Client::connect_with`].
    pub async fn connect<I, S>(addrs: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::connect_with(addrs, ClientConfig::default()).await
    }

    /// Connects to a cluster through the given nodes.
    ///
    /// Each address is `host:port` or `http://host:port`. Addresses are validated
    /// now ([`Error::InvalidAddress`] for a bad one or an empty list), but
    /// connections are opened lazily on first use, so this succeeds even when
    /// every node is down: each call then reports [`Error::Unavailable`]. Calls go
    /// to the first address until it fails (see the crate docs for failover).
    /// A token that can not be sent in a header is refused now with
    /// [`Error::InvalidArgument`]; whether the nodes accept it shows on the
    /// first call.
    ///
    /// Must be called within a Tokio runtime, which runs the connections.
    pub async fn connect_with<I, S>(addrs: I, config: ClientConfig) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let addresses = addrs
            .into_iter()
            .map(|a| parse_address(a.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if addresses.is_empty() {
            return Err(Error::InvalidAddress("no address given".to_owned()));
        }
        let authorization = config.token.as_deref().map(bearer).transpose()?;
        if let Err(e) = tokio::runtime::Handle::try_current() {
            return Err(Error::Other(Status::failed_precondition(format!(
                "tessera-client must be used within a Tokio runtime: {e}"
            ))));
        }
        let nodes = addresses
            .into_iter()
            .map(|address| {
                let endpoint = config
                    .endpoint(&address.text)?
                    .user_agent(concat!("tessera-client/", env!("CARGO_PKG_VERSION")))
                    .map_err(|e| Error::InvalidAddress(format!("{}: {e}", address.text)))?
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                    .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                    .keep_alive_while_idle(true);
                let grpc = TicketStoreClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(MAX_MESSAGE_SIZE);
                Ok(Node {
                    addr: address.text,
                    batcher: Batcher::start(grpc.clone(), authorization.clone()),
                    grpc,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Client {
            shared: Arc::new(Shared {
                nodes,
                authorization,
                preferred: AtomicUsize::new(0),
            }),
            call_timeout: config.call_timeout,
        })
    }

    /// The same client (same connections, same preferred node) with another
    /// per-call timeout, e.g. a short one on a login path or a long one for admin
    /// work.
    pub fn with_timeout(&self, call_timeout: Duration) -> Client {
        Client {
            shared: Arc::clone(&self.shared),
            call_timeout,
        }
    }

    /// The per-call timeout in force.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The normalized node addresses, in the order given.
    pub fn addresses(&self) -> Vec<&str> {
        self.shared.nodes.iter().map(|n| n.addr.as_str()).collect()
    }

    /// Creates a ticket, or replaces a live one with the same id as a new
    /// incarnation (unless [`NewTicket::create_only`]). Returns the stored ticket,
    /// with its deadline (capped at the parent's) and version.
    ///
    /// Fails with [`Error::FailedPrecondition`] if the parent is not live and
    /// [`Error::AlreadyExists`] for a create-only put of a live id. A plain put
    /// is idempotent and fails over freely; a create-only one only when the first
    /// node provably never received it.
    pub async fn put(&self, ticket: NewTicket) -> Result<Ticket, Error> {
        let idempotency = if ticket.create_only {
            Idempotency::NotIdempotent
        } else {
            Idempotency::Idempotent
        };
        let call = Call::Put(convert::put_request(ticket));
        self.ticket_call(idempotency, call).await
    }

    /// Reads a live ticket without recording a use or extending anything.
    pub async fn get(&self, id: &str) -> Result<Ticket, Error> {
        let call = Call::Get(pb::GetRequest { id: id.to_owned() });
        self.ticket_call(Idempotency::Idempotent, call).await
    }

    /// Records one use (`last_used` = now, `uses` + 1), which restarts the idle
    /// timeout, and returns the ticket after it.
    ///
    /// Not idempotent: retried on another node only if the first provably never
    /// received it.
    pub async fn touch(&self, id: &str) -> Result<Ticket, Error> {
        let call = Call::Touch(pb::TouchRequest { id: id.to_owned() });
        self.ticket_call(Idempotency::NotIdempotent, call).await
    }

    /// Checks and records one use atomically: of concurrent consumes of a ticket
    /// with `max_uses = N`, at most N succeed; the others get
    /// [`Error::NotFound`]. Meant for service and proxy ticket validation.
    ///
    /// Not idempotent: retried on another node only if the first provably never
    /// received it. After [`Error::Timeout`] the use may or may not have been
    /// recorded.
    pub async fn consume(&self, id: &str) -> Result<Ticket, Error> {
        let call = Call::Consume(pb::ConsumeRequest { id: id.to_owned() });
        self.ticket_call(Idempotency::NotIdempotent, call).await
    }

    /// Replaces the payload and/or idle timeout of a live ticket; with
    /// [`TicketUpdate::if_version`] only if the version still matches
    /// ([`Error::VersionMismatch`] otherwise).
    ///
    /// Without `if_version` the update is idempotent and fails over freely; with
    /// it, only when the first node provably never received it.
    pub async fn update(&self, id: &str, update: TicketUpdate) -> Result<Ticket, Error> {
        let idempotency = if update.if_version.is_some() {
            Idempotency::NotIdempotent
        } else {
            Idempotency::Idempotent
        };
        let call = Call::Update(convert::update_request(id, update));
        self.ticket_call(idempotency, call).await
    }

    /// Deletes a ticket and all its descendants; returns how many live tickets
    /// were removed (0 if it did not exist, which is not an error).
    pub async fn delete(&self, id: &str) -> Result<u64, Error> {
        let call = Call::Delete(pb::DeleteRequest { id: id.to_owned() });
        match self.call(Idempotency::Idempotent, call).await? {
            Outcome::Deleted(reply) => Ok(reply.deleted),
            other => Err(unexpected("delete", &other)),
        }
    }

    /// Deletes every ticket that exists when the call starts; returns the number removed.
    pub async fn delete_all(&self) -> Result<u64, Error> {
        self.unary(
            Idempotency::Idempotent,
            |mut c, req| async move { c.delete_all(req).await },
            pb::DeleteAllRequest {},
        )
        .await
        .map(|r| r.deleted)
    }

    /// Deletes every ticket of a principal with their descendants (logout
    /// everywhere); returns the number removed.
    pub async fn delete_for(&self, principal: &str) -> Result<u64, Error> {
        let msg = pb::DeleteForRequest {
            principal: principal.to_owned(),
        };
        self.unary(
            Idempotency::Idempotent,
            |mut c, req| async move { c.delete_for(req).await },
            msg,
        )
        .await
        .map(|r| r.deleted)
    }

    /// Number of live tickets, total and per kind (from counters, cheap).
    pub async fn count(&self) -> Result<Counts, Error> {
        self.unary(
            Idempotency::Idempotent,
            |mut c, req| async move { c.count(req).await },
            pb::CountRequest {},
        )
        .await
        .map(Counts::from)
    }

    /// Live ticket-granting tickets (kind TGT) of a principal, matched
    /// case-insensitively: the user's SSO sessions.
    pub async fn sessions_for(&self, principal: &str) -> Result<Vec<Ticket>, Error> {
        let msg = pb::SessionsForRequest {
            principal: principal.to_owned(),
        };
        self.unary(
            Idempotency::Idempotent,
            |mut c, req| async move { c.sessions_for(req).await },
            msg,
        )
        .await
        .map(|r| r.tickets.into_iter().map(Ticket::from).collect())
    }

    /// Streams live tickets matching the filter.
    ///
    /// The call fails over to another node only until the first ticket (or the
    /// end of an empty listing) has arrived; after that an error ends the stream.
    /// No `grpc-timeout` is sent, since a listing may outlast the call timeout;
    /// instead the timeout bounds every wait for the next ticket.
    pub async fn list(&self, filter: ListFilter) -> Result<TicketStream, Error> {
        let msg = convert::list_request(filter);
        let (stream, first) = self
            .attempts(Idempotency::Idempotent, |node| {
                let mut c = node.grpc.clone();
                let req = self.request(msg.clone());
                async move {
                    let mut stream = c.list(req).await?.into_inner();
                    let first = stream.message().await?;
                    Ok((stream, first))
                }
            })
            .await?;
        Ok(TicketStream::new(stream, first, self.call_timeout))
    }

    /// Ticket events as the first reachable node reports them (created,
    /// deleted, expired, used up), for single logout. Each event is reported
    /// by one node of the cluster (an expiry by the ticket's arbiter), so to
    /// hear every event, watch every node once across the fleet (e.g. each
    /// CAS node watches the Tessera node it runs beside); a client with one
    /// address watches that node. The stream ends with an error when the
    /// node stops or drops a watcher too slow to keep up: watch again with
    /// the last position received in [`WatchFilter::resume_after`].
    pub async fn watch(&self, filter: WatchFilter) -> Result<EventStream, Error> {
        let msg = pb::WatchRequest {
            kinds: filter.kinds,
            types: filter
                .events
                .into_iter()
                .map(crate::watch::event_type_to_pb)
                .collect(),
            resume_after: filter.resume_after,
        };
        let stream = self
            .attempts(Idempotency::Idempotent, |node| {
                let mut c = node.grpc.clone();
                let req = self.request(msg.clone());
                async move { Ok(c.watch(req).await?.into_inner()) }
            })
            .await?;
        Ok(EventStream::new(stream))
    }

    /// The cluster's nodes as the answering node sees them.
    pub async fn members(&self) -> Result<Vec<Member>, Error> {
        self.unary(
            Idempotency::Idempotent,
            |mut c, req| async move { c.members(req).await },
            pb::MembersRequest {},
        )
        .await
        .map(|r| r.members.into_iter().map(Member::from).collect())
    }

    /// Counters of the node that answers (the first reachable one): what it
    /// refused and why since it started. Not a cluster-wide figure; connect
    /// to one address to ask a given node.
    pub async fn stats(&self) -> Result<NodeStats, Error> {
        self.unary(
            Idempotency::Idempotent,
            |mut c, req| async move { c.stats(req).await },
            pb::StatsRequest {},
        )
        .await
    }

    /// A call answered with a ticket.
    async fn ticket_call(&self, idempotency: Idempotency, call: Call) -> Result<Ticket, Error> {
        match self.call(idempotency, call).await? {
            Outcome::Ticket(ticket) => Ok(Ticket::from(ticket)),
            other => Err(unexpected("ticket call", &other)),
        }
    }

    /// A ticket call, through each node's batcher (see [`crate::batch`]).
    async fn call(&self, idempotency: Idempotency, call: Call) -> Result<Outcome, Error> {
        let timeout = self.call_timeout;
        self.attempts(idempotency, |node| node.batcher.call(call.clone(), timeout))
            .await
    }

    /// A unary call: a fresh request with the `grpc-timeout` header per attempt.
    async fn unary<M, R, F, Fut>(
        &self,
        idempotency: Idempotency,
        call: F,
        msg: M,
    ) -> Result<R, Error>
    where
        M: Clone,
        F: Fn(TicketStoreClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        self.attempts(idempotency, |node| {
            let c = node.grpc.clone();
            let mut req = self.request(msg.clone());
            // The server stops working on it once the caller has given up.
            req.set_timeout(self.call_timeout);
            let fut = call(c, req);
            async move { fut.await.map(Response::into_inner) }
        })
        .await
    }

    /// A request carrying the API token, if one is configured.
    fn request<M>(&self, msg: M) -> Request<M> {
        authorized(msg, self.shared.authorization.as_ref())
    }

    /// Runs `attempt` against the nodes, starting with the preferred one, trying
    /// each at most once, until one succeeds or a failure may not fail over.
    async fn attempts<R, F, Fut>(
        &self,
        idempotency: Idempotency,
        mut attempt: F,
    ) -> Result<R, Error>
    where
        F: FnMut(&Node) -> Fut,
        Fut: Future<Output = Result<R, Status>>,
    {
        let nodes = &self.shared.nodes;
        let count = nodes.len();
        let start = self.shared.preferred.load(Ordering::Relaxed);
        let mut failed: Vec<Error> = Vec::new();
        for step in 0..count {
            let index = (start + step) % count;
            let Some(node) = nodes.get(index) else {
                continue;
            };
            let failure = match tokio::time::timeout(self.call_timeout, attempt(node)).await {
                Ok(Ok(reply)) => {
                    self.prefer(index);
                    return Ok(reply);
                }
                Ok(Err(status)) => Failure::Status(status),
                Err(_) => Failure::Elapsed(self.call_timeout),
            };
            if !fails_over(&failure, idempotency) {
                if fails_over(&failure, Idempotency::Idempotent) {
                    // The node did not answer: this call may not be repeated
                    // elsewhere, but the next ones should not start there.
                    self.prefer((index + 1) % count);
                } else {
                    // The node answered: it is reachable, keep using it.
                    self.prefer(index);
                }
                return Err(attempt_error(&node.addr, failure));
            }
            failed.push(attempt_error(&node.addr, failure));
        }
        Err(exhausted(failed))
    }

    fn prefer(&self, index: usize) {
        self.shared.preferred.store(index, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn preferred(&self) -> usize {
        self.shared.preferred.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addresses", &self.addresses())
            .field("call_timeout", &self.call_timeout)
            .field("token", &self.shared.authorization.is_some())
            .finish()
    }
}

/// The error of one failed attempt; failures on the way to a node name its address.
fn attempt_error(addr: &str, failure: Failure) -> Error {
    match failure {
        Failure::Elapsed(after) => Error::Timeout(format!("{addr}: no answer within {after:?}")),
        Failure::Status(status) => match Error::from(status) {
            Error::Unavailable(m) => Error::Unavailable(format!("{addr}: {m}")),
            Error::Timeout(m) => Error::Timeout(format!("{addr}: {m}")),
            // Which node refused matters: one node may hold another token.
            Error::Unauthenticated(m) => Error::Unauthenticated(format!("{addr}: {m}")),
            Error::Other(s) if s.source().is_some() => {
                // A broken connection rather than an answer: say where.
                let message = format!("{addr}: {}", crate::error::describe(&s));
                Error::Other(Status::new(s.code(), message))
            }
            other => other,
        },
    }
}

/// A request carrying `authorization` (the API token's header), if any.
pub(crate) fn authorized<M>(msg: M, authorization: Option<&AsciiMetadataValue>) -> Request<M> {
    let mut req = Request::new(msg);
    if let Some(authorization) = authorization {
        req.metadata_mut()
            .insert("authorization", authorization.clone());
    }
    req
}

/// A node answered a call with the outcome of another kind of call.
fn unexpected(what: &str, outcome: &Outcome) -> Error {
    let got = match outcome {
        Outcome::Ticket(_) => "a ticket",
        Outcome::Deleted(_) => "a delete count",
        Outcome::Error(_) => "an error",
    };
    Error::Other(Status::internal(format!(
        "the node answered a {what} with {got}"
    )))
}

/// The error once every node has been tried: the only one if there was one node,
/// otherwise all of them in one message.
fn exhausted(mut failed: Vec<Error>) -> Error {
    if failed.len() == 1
        && let Some(only) = failed.pop()
    {
        return only;
    }
    if failed.is_empty() {
        return Error::Unavailable("no node to try".to_owned());
    }
    let all_timeouts = failed.iter().all(|e| matches!(e, Error::Timeout(_)));
    let details = failed
        .iter()
        .map(|e| match e {
            Error::Unavailable(m) | Error::Timeout(m) => m.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ");
    if all_timeouts {
        Error::Timeout(format!("no node answered in time: {details}"))
    } else {
        Error::Unavailable(format!("no node reachable: {details}"))
    }
}
