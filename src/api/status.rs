//! The one place where store errors become gRPC statuses.

use tonic::{Code, Status};

use crate::error::StoreError;

pub fn to_status(error: StoreError) -> Status {
    let code = match &error {
        StoreError::InvalidArgument { .. } => Code::InvalidArgument,
        StoreError::NotFound => Code::NotFound,
        StoreError::AlreadyExists(_) => Code::AlreadyExists,
        StoreError::FailedPrecondition(_) => Code::FailedPrecondition,
        StoreError::VersionMismatch { .. } => Code::Aborted,
        StoreError::Unavailable(_) => Code::Unavailable,
    };
    Status::new(code, error.to_string())
}
