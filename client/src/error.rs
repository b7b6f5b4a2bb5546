//! The client's error type and the single place where gRPC statuses become errors.

use std::error::Error as StdError;

use tonic::{Code, Status};

/// What went wrong with a call.
///
/// The variants a ticket registry has to react to (a ticket is gone, an id is
/// taken, a compare-and-set lost, no node answered) get their own variant; the
/// string carries the server's own message (or, for failures on the client side,
/// the address tried and the cause), ready to log. Anything else keeps the
/// original [`tonic::Status`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ticket is missing, expired, used up or deleted (`NOT_FOUND`).
    ///
    /// Tessera deliberately does not say which: to a CAS server they all mean
    /// "this ticket is not valid".
    #[error("not found: {0}")]
    NotFound(String),
    /// A live ticket with that id exists and the put was `create_only` (`ALREADY_EXISTS`).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// An update with `if_version` lost a compare-and-set race (`ABORTED`): re-read and retry.
    #[error("version mismatch: {0}")]
    VersionMismatch(String),
    /// The request was refused as malformed (`INVALID_ARGUMENT`), or a message was
    /// too large (`OUT_OF_RANGE` / `RESOURCE_EXHAUSTED`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request is well-formed but the state does not allow it, e.g. the parent
    /// ticket is not live (`FAILED_PRECONDITION`).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// No node could be reached, or every node tried answered `UNAVAILABLE`.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call did not complete within the call timeout (client side), or the
    /// server gave up on its deadline (`DEADLINE_EXCEEDED`).
    ///
    /// For calls that are not idempotent (consume, touch, create-only put,
    /// compare-and-set update) the outcome is then unknown: the server may or may
    /// not have applied it.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The node requires an API token and the call carried none, or a wrong one
    /// (`UNAUTHENTICATED`): set [`ClientConfig::token`](crate::ClientConfig::token).
    ///
    /// A configuration error, not an outage: the call is not tried on another
    /// node (the cluster shares one token), and nothing was read or written.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// An address given to [`Client::connect`](crate::Client::connect) is not valid.
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    /// Any other gRPC status, kept whole (code, message, metadata).
    #[error("{:?}: {}", .0.code(), .0.message())]
    Other(Status),
}

impl Error {
    /// True for [`Error::NotFound`]: the ticket is not (or no longer) valid.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }

    /// The gRPC code this error stands for; `None` for [`Error::InvalidAddress`],
    /// which never reached the wire.
    ///
    /// [`Error::InvalidArgument`] reports `InvalidArgument` even when it came from
    /// `OUT_OF_RANGE` or `RESOURCE_EXHAUSTED`, and [`Error::Timeout`] reports
    /// `DeadlineExceeded` also for timeouts measured on the client.
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::VersionMismatch(_) => Code::Aborted,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::InvalidAddress(_) => return None,
            Error::Other(status) => status.code(),
        })
    }
}

/// The one mapping from a gRPC status to [`Error`]. The message is kept; for
/// statuses made on the client from a transport failure, the causes are appended
/// (tonic's own message is often just "tcp connect error").
impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let message = describe(&status);
        match status.code() {
            Code::NotFound => Error::NotFound(message),
            Code::AlreadyExists => Error::AlreadyExists(message),
            Code::Aborted => Error::VersionMismatch(message),
            Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted => {
                Error::InvalidArgument(message)
            }
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            Code::Unavailable => Error::Unavailable(message),
            Code::DeadlineExceeded => Error::Timeout(message),
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::Cancelled if is_client_timeout(&status) => Error::Timeout(message),
            _ => Error::Other(status),
        }
    }
}

/// The status message followed by the distinct messages of its source chain.
pub(crate) fn describe(status: &Status) -> String {
    let mut text = status.message().to_owned();
    for cause in sources(status) {
        let cause = cause.to_string();
        // tonic's wrapper adds nothing but "transport error".
        if cause.is_empty() || cause == "transport error" || text.contains(&cause) {
            continue;
        }
        if text.is_empty() {
            text = cause;
        } else {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    if text.is_empty() {
        text = format!("{:?}", status.code());
    }
    if refused_our_certificate(&text) {
        text.push_str(" (the node refused this client's certificate)");
    }
    text
}

/// The TLS alerts a server sends when it refuses the client's certificate
/// (mTLS), as rustls names them in "received fatal alert: ...". rustls sends
/// `CertificateExpired` for one not valid yet too.
const CLIENT_CERTIFICATE_ALERTS: &[&str] = &[
    "BadCertificate",
    "UnsupportedCertificate",
    "CertificateRevoked",
    "CertificateExpired",
    "CertificateUnknown",
    "UnknownCA",
    "CertificateRequired",
];

/// True when `text` says the node sent one of [`CLIENT_CERTIFICATE_ALERTS`]:
/// the alert's name alone does not say whose certificate it was about.
fn refused_our_certificate(text: &str) -> bool {
    const RECEIVED: &str = "received fatal alert: ";
    text.match_indices(RECEIVED).any(|(at, _)| {
        let alert = &text[at + RECEIVED.len()..];
        let name = alert
            .split(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .unwrap_or_default();
        CLIENT_CERTIFICATE_ALERTS.contains(&name)
    })
}

/// Iterates over the source chain of a status (not including the status itself).
pub(crate) fn sources(status: &Status) -> impl Iterator<Item = &(dyn StdError + 'static)> {
    let mut next = status.source();
    std::iter::from_fn(move || {
        let current = next?;
        next = current.source();
        Some(current)
    })
}

/// True when tonic turned its own expiry of the `grpc-timeout` into `CANCELLED`.
pub(crate) fn is_client_timeout(status: &Status) -> bool {
    status.code() == Code::Cancelled
        && (sources(status).any(|e| e.is::<tonic::TimeoutExpired>())
            || status.message() == "Timeout expired")
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn maps_each_code_to_its_variant_and_keeps_the_message() {
        type Check = fn(&Error) -> bool;
        let cases: Vec<(Status, Check)> = vec![
            (
                Status::not_found("no such ticket"),
                |e| matches!(e, Error::NotFound(m) if m == "no such ticket"),
            ),
            (
                Status::already_exists("taken"),
                |e| matches!(e, Error::AlreadyExists(m) if m == "taken"),
            ),
            (
                Status::aborted("version is v2"),
                |e| matches!(e, Error::VersionMismatch(m) if m == "version is v2"),
            ),
            (
                Status::invalid_argument("ttl_ms must be > 0"),
                |e| matches!(e, Error::InvalidArgument(m) if m == "ttl_ms must be > 0"),
            ),
            (
                Status::out_of_range("message too large"),
                |e| matches!(e, Error::InvalidArgument(m) if m == "message too large"),
            ),
            (
                Status::resource_exhausted("payload over 1 MiB"),
                |e| matches!(e, Error::InvalidArgument(m) if m == "payload over 1 MiB"),
            ),
            (
                Status::failed_precondition("parent not live"),
                |e| matches!(e, Error::FailedPrecondition(m) if m == "parent not live"),
            ),
            (
                Status::unavailable("draining"),
                |e| matches!(e, Error::Unavailable(m) if m == "draining"),
            ),
            (
                Status::deadline_exceeded("too slow"),
                |e| matches!(e, Error::Timeout(m) if m == "too slow"),
            ),
            (
                Status::unauthenticated("missing or wrong API token"),
                |e| matches!(e, Error::Unauthenticated(m) if m == "missing or wrong API token"),
            ),
            (
                Status::permission_denied("nope"),
                |e| matches!(e, Error::Other(s) if s.code() == Code::PermissionDenied && s.message() == "nope"),
            ),
            (
                Status::internal("boom"),
                |e| matches!(e, Error::Other(s) if s.code() == Code::Internal),
            ),
            (
                Status::cancelled("client went away"),
                |e| matches!(e, Error::Other(s) if s.code() == Code::Cancelled),
            ),
        ];
        for (status, check) in cases {
            let shown = format!("{status:?}");
            let error = Error::from(status);
            assert!(check(&error), "{shown} mapped to {error:?}");
        }
    }

    #[test]
    fn tonic_client_timeout_is_a_timeout() {
        let mut status = Status::cancelled("Timeout expired");
        status.set_source(Arc::new(tonic::TimeoutExpired(())));
        assert!(matches!(Error::from(status), Error::Timeout(_)));
    }

    #[test]
    fn transport_causes_are_appended_to_the_message() {
        let mut status = Status::unavailable("tcp connect error");
        status.set_source(Arc::new(tonic::ConnectError(Box::new(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        )))));
        match Error::from(status) {
            Error::Unavailable(m) => {
                assert_eq!(m, "tcp connect error: Connection refused (os error 111)")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_client_certificate_is_named_as_such() {
        let alert = |name: &str| {
            let mut status = Status::unknown("transport error");
            status.set_source(Arc::new(io::Error::other(format!(
                "connection error: received fatal alert: {name}"
            ))));
            describe(&status)
        };
        assert_eq!(
            alert("CertificateExpired"),
            "transport error: connection error: received fatal alert: \
             CertificateExpired (the node refused this client's certificate)"
        );
        assert!(alert("UnknownCA").ends_with("(the node refused this client's certificate)"));
        // Alerts about something else, and near names, get no such note.
        for other in ["HandshakeFailure", "BadCertificateHashValue", "DecodeError"] {
            let message = alert(other);
            assert!(!message.contains("refused"), "{message}");
        }
    }

    #[test]
    fn code_round_trips() {
        assert_eq!(
            Error::from(Status::aborted("x")).code(),
            Some(Code::Aborted)
        );
        assert_eq!(
            Error::Timeout("x".into()).code(),
            Some(Code::DeadlineExceeded)
        );
        assert_eq!(Error::InvalidAddress("x".into()).code(), None);
        assert_eq!(
            Error::from(Status::unauthenticated("x")).code(),
            Some(Code::Unauthenticated)
        );
        assert_eq!(
            Error::Unauthenticated("x".into()).code(),
            Some(Code::Unauthenticated)
        );
        assert!(Error::from(Status::not_found("x")).is_not_found());
        assert!(!Error::from(Status::aborted("x")).is_not_found());
    }

    #[test]
    fn display_is_readable() {
        assert_eq!(
            Error::from(Status::not_found("ticket ST-1 not found")).to_string(),
            "not found: ticket ST-1 not found"
        );
        assert_eq!(
            Error::from(Status::internal("boom")).to_string(),
            "Internal: boom"
        );
        assert_eq!(
            Error::from(Status::unauthenticated("missing or wrong API token")).to_string(),
            "unauthenticated: missing or wrong API token"
        );
    }
}
