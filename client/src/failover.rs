//! Which failed attempts may be repeated on the next node.
//!
//! The rule (also in the crate docs): an idempotent call may be repeated after any
//! failure that says "this node did not answer" (`UNAVAILABLE`, a timeout, a broken
//! connection), because doing it twice is harmless. A call that is not idempotent
//! is repeated only when the first node provably did not act on it: the connection
//! was never established, or the node refused because it is draining or fenced
//! for its clock. After a
//! timeout or a connection lost mid-call the request may well have been applied,
//! and a second consume on another node would count the use twice (a service
//! ticket with `max_uses = 1` would then fail validation although the user did
//! nothing wrong, or a use would be recorded that never happened).
//!
//! Answers never fail over, `UNAUTHENTICATED` included: every node of a cluster
//! holds the same token, so a refused token would be refused everywhere.

use std::error::Error as _;
use std::io;
use std::time::Duration;

use tonic::{Code, Status};

use crate::error::{is_client_timeout, sources};

/// Whether repeating a call on another node is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotency {
    /// Doing it twice leaves the same state as doing it once (reads, deletes,
    /// unconditional puts and updates).
    Idempotent,
    /// Doing it twice differs from doing it once (consume, touch, create-only
    /// put, compare-and-set update).
    NotIdempotent,
}

/// How one attempt on one node failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The node (or the transport to it) returned a status.
    Status(Status),
    /// The client-side timer ran out first.
    Elapsed(Duration),
}

/// Whether this failure allows trying the next address.
pub(crate) fn fails_over(failure: &Failure, idempotency: Idempotency) -> bool {
    match (failure, idempotency) {
        (Failure::Elapsed(_), Idempotency::Idempotent) => true,
        (Failure::Elapsed(_), Idempotency::NotIdempotent) => false,
        (Failure::Status(status), Idempotency::Idempotent) => node_did_not_answer(status),
        (Failure::Status(status), Idempotency::NotIdempotent) => never_reached_server(status),
    }
}

/// Any sign that the node, not the request, is the problem.
pub(crate) fn node_did_not_answer(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        Code::Cancelled if is_client_timeout(status) => true,
        // A status built on the client from an I/O or HTTP/2 error (it carries
        // the error as its source; statuses sent by a server never do): the
        // connection broke.
        Code::Unknown | Code::Internal | Code::Cancelled => status.source().is_some(),
        _ => false,
    }
}

/// True only when the request can not have been acted upon by the server.
pub(crate) fn never_reached_server(status: &Status) -> bool {
    is_refused_unacted(status) || is_connect_failure(status)
}

/// Message prefixes of the `UNAVAILABLE` refusals a node gives before touching
/// any ticket: `draining` (it is shutting down), `fenced` (its clock
/// disagrees with most of its peers, so it takes no decision at all) and
/// `not ready` (it has not caught up with its cluster, or its clock is in
/// doubt).
const UNACTED_PREFIXES: [&str; 3] = ["draining", "fenced", "not ready"];

/// The node refused the call before acting on it (see [`UNACTED_PREFIXES`]):
/// another node may do it, even when the call is not idempotent.
fn is_refused_unacted(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && UNACTED_PREFIXES.iter().any(|prefix| {
            status
                .message()
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
        })
}

/// The connection was never established (refused, unroutable, connect timeout,
/// failed handshake), so no request bytes reached a server.
///
/// tonic marks every failure of its connector with [`tonic::ConnectError`]; the
/// I/O error kinds are a second line of evidence, as they can only arise while
/// connecting. A mere [`tonic::transport::Error`] in the chain is *not* enough: the
/// channel wraps every failure in one, including a connection reset after the
/// request was sent.
fn is_connect_failure(status: &Status) -> bool {
    sources(status).any(|e| {
        e.is::<tonic::ConnectError>()
            || e.downcast_ref::<io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::AddrNotAvailable
                        | io::ErrorKind::HostUnreachable
                        | io::ErrorKind::NetworkUnreachable
                )
            })
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use Idempotency::{Idempotent, NotIdempotent};

    fn with_source(
        mut status: Status,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Status {
        status.set_source(Arc::new(source));
        status
    }

    fn connect_refused() -> Status {
        with_source(
            Status::unavailable("tcp connect error"),
            tonic::ConnectError(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused))),
        )
    }

    fn reset_mid_call() -> Status {
        // What tonic builds when the HTTP/2 connection dies after the request went out.
        with_source(
            Status::unknown("connection reset"),
            io::Error::from(io::ErrorKind::ConnectionReset),
        )
    }

    fn both(failure: Failure) -> (bool, bool) {
        (
            fails_over(&failure, Idempotent),
            fails_over(&failure, NotIdempotent),
        )
    }

    #[test]
    fn connect_failures_fail_over_for_every_call() {
        assert_eq!(both(Failure::Status(connect_refused())), (true, true));
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::AddrNotAvailable,
            io::ErrorKind::HostUnreachable,
            io::ErrorKind::NetworkUnreachable,
        ] {
            let status = with_source(Status::unavailable("connect"), io::Error::from(kind));
            assert_eq!(both(Failure::Status(status)), (true, true), "{kind:?}");
        }
    }

    #[test]
    fn draining_fails_over_for_every_call() {
        let status = Status::unavailable("draining: node is leaving the cluster");
        assert_eq!(both(Failure::Status(status)), (true, true));
        let status = Status::unavailable("Draining");
        assert_eq!(both(Failure::Status(status)), (true, true));
    }

    #[test]
    fn fenced_fails_over_for_every_call() {
        let status =
            Status::unavailable("fenced: this node's clock disagrees with most of its peers");
        assert_eq!(both(Failure::Status(status)), (true, true));
        let status = Status::unavailable("FENCED");
        assert_eq!(both(Failure::Status(status)), (true, true));
        // Only the refusal's own code counts.
        let status = Status::failed_precondition("fenced: something else");
        assert_eq!(both(Failure::Status(status)), (false, false));
    }

    #[test]
    fn not_ready_fails_over_for_every_call() {
        let status = Status::unavailable("not ready: still joining");
        assert_eq!(both(Failure::Status(status)), (true, true));
    }

    #[test]
    fn other_unavailable_fails_over_only_when_idempotent() {
        let status = Status::unavailable("ready soon");
        assert_eq!(both(Failure::Status(status)), (true, false));
        let status = Status::unavailable("dra");
        assert_eq!(both(Failure::Status(status)), (true, false));
        let status = Status::unavailable("the arbiter is fenced");
        assert_eq!(both(Failure::Status(status)), (true, false));
    }

    #[test]
    fn timeouts_fail_over_only_when_idempotent() {
        assert_eq!(
            both(Failure::Elapsed(Duration::from_secs(5))),
            (true, false)
        );
        assert_eq!(
            both(Failure::Status(Status::deadline_exceeded("deadline"))),
            (true, false)
        );
        let tonic_timeout = with_source(
            Status::cancelled("Timeout expired"),
            tonic::TimeoutExpired(()),
        );
        assert_eq!(both(Failure::Status(tonic_timeout)), (true, false));
    }

    #[test]
    fn broken_connections_fail_over_only_when_idempotent() {
        assert_eq!(both(Failure::Status(reset_mid_call())), (true, false));
        // A transport error wrapper alone proves nothing about the request.
        let wrapped = with_source(
            Status::internal("h2 protocol error"),
            io::Error::other("stream reset"),
        );
        assert_eq!(both(Failure::Status(wrapped)), (true, false));
    }

    #[test]
    fn answers_from_the_server_never_fail_over() {
        for status in [
            Status::not_found("gone"),
            Status::already_exists("taken"),
            Status::aborted("version"),
            Status::invalid_argument("bad"),
            Status::failed_precondition("parent not live"),
            Status::internal("bug"),
            Status::unknown("?"),
            Status::cancelled("cancelled by server"),
            Status::permission_denied("no"),
            // A wrong token is wrong on every node: no failover.
            Status::unauthenticated("missing or wrong API token"),
            Status::resource_exhausted("too big"),
        ] {
            let shown = format!("{status:?}");
            assert_eq!(both(Failure::Status(status)), (false, false), "{shown}");
        }
    }
}
