//! Who may call the ticket API: the one place it is decided.
//!
//! With an API token set, every `tessera.v1.TicketStore` call must carry the
//! gRPC metadata `authorization: Bearer <token>`; anything else is refused with
//! UNAUTHENTICATED before the request body is decoded or any ticket is touched.
//! The answer never says what was sent or how close it came. The interceptor is
//! applied to the ticket service only: the health service (load balancers) and
//! reflection (grpcurl) stay open, since neither reveals a ticket.
//!
//! Without a token (a single node; a node with peers refuses to start without
//! one) every call passes, as before.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::warn;

use crate::secret::ApiToken;

/// The message of every refusal: the same whether the header was missing,
/// malformed or wrong, so a caller learns nothing from it.
pub const UNAUTHENTICATED_MESSAGE: &str = "missing or wrong API token";

/// At most one warning per this interval, however many calls are refused (a
/// misconfigured client retrying in a loop must not flood the log).
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Checks the bearer token of each ticket API call. Cheap to clone (tonic
/// clones it per connection); clones share the counters.
#[derive(Clone)]
pub struct ApiAuth {
    /// BLAKE3 hash of the token, `None` when the API is open. Hashes are
    /// compared, in constant time (`blake3::Hash`'s `==`), so neither the
    /// comparison's duration nor a length check tells how much of a guess
    /// was right.
    expected: Option<blake3::Hash>,
    stats: Arc<AuthStats>,
}

/// Refusals so far, and the warning rate limit.
#[derive(Debug, Default)]
pub struct AuthStats {
    rejections: AtomicU64,
    warnings: Mutex<WarnState>,
}

#[derive(Debug, Default)]
struct WarnState {
    last: Option<Instant>,
    /// Refusals not logged since the last warning.
    unlogged: u64,
}

impl ApiAuth {
    /// Require this token, or leave the API open with `None`.
    pub fn new(token: Option<&ApiToken>) -> ApiAuth {
        ApiAuth {
            expected: token.map(|t| blake3::hash(t.expose().as_bytes())),
            stats: Arc::new(AuthStats::default()),
        }
    }

    /// Whether calls need a token.
    pub fn is_required(&self) -> bool {
        self.expected.is_some()
    }

    /// The counters, shared with every clone.
    pub fn stats(&self) -> Arc<AuthStats> {
        self.stats.clone()
    }

    /// Whether the metadata carries the right bearer token (always, when open).
    pub fn admits(&self, metadata: &MetadataMap) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        let Some(presented) = bearer_token(metadata) else {
            return false;
        };
        blake3::hash(presented) == *expected
    }
}

impl Interceptor for ApiAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.admits(request.metadata()) {
            Ok(request)
        } else {
            self.stats.reject(request.remote_addr(), Instant::now());
            Err(Status::unauthenticated(UNAUTHENTICATED_MESSAGE))
        }
    }
}

/// The token of an `authorization: Bearer <token>` entry (scheme matched
/// case-insensitively, as HTTP auth schemes are).
fn bearer_token(metadata: &MetadataMap) -> Option<&[u8]> {
    let value = metadata.get("authorization")?.as_bytes();
    let (scheme, token) = value.split_at_checked(6)?;
    let token = token.strip_prefix(b" ")?.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

impl AuthStats {
    /// Ticket API calls refused since the node started.
    pub fn rejections(&self) -> u64 {
        self.rejections.load(Ordering::Relaxed)
    }

    /// Count a refusal and log it, at most once per [`WARN_INTERVAL`].
    fn reject(&self, peer: Option<SocketAddr>, now: Instant) {
        let total = self.rejections.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(unlogged) = self.due_warning(now) {
            let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
            warn!(
                %peer,
                total,
                unlogged,
                "ticket API call refused: missing or wrong API token (further refusals within 10 s are only counted)"
            );
        }
    }

    /// `Some(refusals not logged before this one)` when a warning is due now.
    fn due_warning(&self, now: Instant) -> Option<u64> {
        let mut state = self.warnings.lock().unwrap_or_else(|e| e.into_inner());
        let due = state
            .last
            .is_none_or(|last| now.duration_since(last) >= WARN_INTERVAL);
        if due {
            state.last = Some(now);
            Some(std::mem::take(&mut state.unlogged))
        } else {
            state.unlogged += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef-token";

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            request.metadata_mut().insert(
                "authorization",
                MetadataValue::try_from(value).expect("ascii"),
            );
        }
        request
    }

    fn auth() -> ApiAuth {
        ApiAuth::new(Some(&ApiToken::new(TOKEN.as_bytes()).unwrap()))
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let mut auth = auth();
        assert!(auth.call(request(Some(&format!("Bearer {TOKEN}")))).is_ok());
        assert!(auth.call(request(Some(&format!("bearer {TOKEN}")))).is_ok());
        for wrong in [
            None,
            Some(TOKEN.to_owned()),
            Some(format!("Basic {TOKEN}")),
            Some(format!("Bearer{TOKEN}")),
            Some(format!("Bearer {TOKEN}x")),
            Some(format!("Bearer {}", &TOKEN[1..])),
            Some("Bearer ".to_owned()),
            Some("Bearer".to_owned()),
            Some(String::new()),
        ] {
            let status = auth.call(request(wrong.as_deref())).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{wrong:?}");
            assert_eq!(status.message(), UNAUTHENTICATED_MESSAGE);
        }
        assert_eq!(auth.stats().rejections(), 9);
    }

    #[test]
    fn without_a_token_everything_passes() {
        let mut open = ApiAuth::new(None);
        assert!(!open.is_required());
        assert!(open.call(request(None)).is_ok());
        assert!(open.call(request(Some("Bearer whatever"))).is_ok());
        assert_eq!(open.stats().rejections(), 0);
    }

    #[test]
    fn warnings_are_rate_limited_but_every_refusal_is_counted() {
        let stats = AuthStats::default();
        let start = Instant::now();
        assert_eq!(stats.due_warning(start), Some(0));
        assert_eq!(stats.due_warning(start + Duration::from_secs(1)), None);
        assert_eq!(stats.due_warning(start + Duration::from_secs(9)), None);
        assert_eq!(stats.due_warning(start + Duration::from_secs(10)), Some(2));
        assert_eq!(stats.due_warning(start + Duration::from_secs(11)), None);
        for _ in 0..5 {
            stats.reject(None, start);
        }
        assert_eq!(stats.rejections(), 5);
    }
}
