//! Who a request comes from: the session its signed cookie names, and the user behind it,
//! as extractors, so that a handler states what it needs and the cookie is read in one
//! place.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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
        Ok(SessionId(
            session_id(&parts.headers, state).map(|(id, _)| id),
        ))
    }
}

/// The session id in `headers`' cookie, and whether the previous key signed it (the secret
/// is being rotated: see `resign_previous_cookies`).
fn session_id(headers: &HeaderMap, state: &AppState) -> Option<(String, bool)> {
    let current = SignedCookieJar::from_headers(headers, state.cookie_key.clone());
    if let Some(cookie) = current.get(SESSION_COOKIE) {
        return Some((cookie.value().to_owned(), false));
    }
    let previous = state.previous_cookie_key.clone()?;
    let cookie = SignedCookieJar::from_headers(headers, previous).get(SESSION_COOKIE)?;
    Some((cookie.value().to_owned(), true))
}

/// While the secret is rotated, a request whose session cookie the previous secret signed
/// is served as any other, and its response gives the cookie back signed with the current
/// one: by the time the previous secret is dropped, the browsers in use carry new cookies.
pub async fn resign_previous_cookies(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let resign = match state.previous_cookie_key {
        Some(_) => session_id(request.headers(), &state).filter(|(_, previous)| *previous),
        None => None,
    };
    let response = next.run(request).await;
    let Some((id, _)) = resign else {
        return response;
    };
    // A response that sets or removes the session cookie itself (a log-in, a log-out)
    // has the last word.
    let sets_session = response
        .headers()
        .get_all(axum::http::header::SET_COOKIE)
        .iter()
        .any(|c| {
            c.as_bytes()
                .strip_prefix(SESSION_COOKIE.as_bytes())
                .is_some_and(|rest| rest.starts_with(b"="))
        });
    if sets_session {
        return response;
    }
    let jar =
        SignedCookieJar::new(state.cookie_key.clone()).add(super::auth::session_cookie(&state, id));
    (jar, response).into_response()
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
