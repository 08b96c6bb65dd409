//! What a request to the broker can fail with, whichever part serves it (accounts, friends, groups, relay).

use crate::store::DbError;
use shared::proto::ErrorCode;

/// Why a request failed: the user's doing (typed, sent back as is) or the broker's (logged, answered with
/// [`ErrorCode::Internal`]).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    User(#[from] ErrorCode),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("password hashing: {0}")]
    Hash(String),
}
