//! Who a request comes from: the session its signed cookie names, and the user behind it,
//! as extractors, so that a handler states what it needs and the cookie is read in one
//! place.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum_extra::extract::SignedCookieJar;

use super::AppState;
use crate::error::AppError;
use crate::model::User;
use crate::store::SignedIn;

/// The cookie that carries a signed-in browser's session id.
pub const SESSION_COOKIE: &str = "wirechat_session";

/// The session id the request's cookie carries (signed, so never forged), if any.
pub struct SessionId(pub Option<String>);

impl FromRequestParts<AppState> for SessionId {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let jar =
            SignedCookieJar::<axum_extra::extract::cookie::Key>::from_request_parts(parts, state)
                .await
                .unwrap_or_else(|never| match never {});
        Ok(SessionId(
            jar.get(SESSION_COOKIE).map(|c| c.value().to_owned()),
        ))
    }
}

/// The signed-in user, if the session is live.
pub struct CurrentUser(pub Option<User>);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let SessionId(session) = SessionId::from_request_parts(parts, state).await?;
        Ok(CurrentUser(match session {
            Some(id) => state.hub.store.session_user(&id).await?,
            None => None,
        }))
    }
}

/// The signed-in user with the rooms of their sidebar, read in one query.
pub struct SignedInUser(pub Option<SignedIn>);

impl FromRequestParts<AppState> for SignedInUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let SessionId(session) = SessionId::from_request_parts(parts, state).await?;
        Ok(SignedInUser(match session {
            Some(id) => state.hub.store.signed_in(&id).await?,
            None => None,
        }))
    }
}
