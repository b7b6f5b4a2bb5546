//! The store's error type. `api::status` maps it to gRPC statuses in one place.

/// Why a store operation did not happen. Messages never contain a ticket id or
/// payload: they reach clients and, through them, logs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// Bad input: nothing was written.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The ticket is missing, expired, used up or deleted.
    #[error("ticket not found (missing, expired, used up or deleted)")]
    NotFound,
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A compare-and-set lost.
    #[error("version mismatch: the ticket is at version {current}")]
    VersionMismatch { current: String },
    /// The node cannot decide safely right now.
    #[error("{0}")]
    Unavailable(String),
}

impl StoreError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> StoreError {
        StoreError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}
