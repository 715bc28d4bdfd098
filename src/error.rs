//! Errors that end an HTTP request, each with its status. Server faults are logged with
//! their cause and shown to the user as a plain apology, never with internals; refusals say
//! what the user can do.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Not signed in (401).
    #[error("not signed in")]
    SignedOut,
    /// Refused for where it came from (403), with the reason.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// Too many, too fast (429), with the reason and when to try again.
    #[error("too many: {reason}")]
    TooMany {
        reason: &'static str,
        retry_after_secs: u32,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::SignedOut => (StatusCode::UNAUTHORIZED, "Log in first.").into_response(),
            AppError::Forbidden(reason) => (StatusCode::FORBIDDEN, reason).into_response(),
            AppError::TooMany {
                reason,
                retry_after_secs,
            } => {
                let mut response = (StatusCode::TOO_MANY_REQUESTS, reason).into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                response
            }
            AppError::Store(_) | AppError::Internal(_) => {
                tracing::error!(error = %self, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong on our side. Please try again.",
                )
                    .into_response()
            }
        }
    }
}
