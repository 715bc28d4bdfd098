//! Sign up, log in, continue as guest, log out, and finding who a request comes from.
//!
//! Sessions live in the database; the cookie holds only the session id, signed with the
//! node's key so a forged id is rejected before any lookup.

use axum::Form;
use axum::Router;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::post;
use axum_extra::extract::SignedCookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use serde::Deserialize;

use super::AppState;
use crate::accounts;
use crate::chat::names::{Password, Username};
use crate::error::AppError;
use crate::store::{SignedIn, StoreError, User};
use crate::views;

pub const SESSION_COOKIE: &str = "wirechat_session";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/login", post(login).get(super::pages::login_form))
        .route("/signup", post(signup))
        .route("/guest", post(guest))
        .route("/logout", post(logout))
}

#[derive(Deserialize)]
pub struct Credentials {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// The user behind the request's session cookie, if the session is live.
pub async fn current_user(
    state: &AppState,
    jar: &SignedCookieJar,
) -> Result<Option<User>, AppError> {
    let Some(cookie) = jar.get(SESSION_COOKIE) else {
        return Ok(None);
    };
    Ok(state.hub.store.session_user(cookie.value()).await?)
}

/// `current_user` together with the rooms of their sidebar, read in one query.
pub async fn signed_in(
    state: &AppState,
    jar: &SignedCookieJar,
) -> Result<Option<SignedIn>, AppError> {
    let Some(cookie) = jar.get(SESSION_COOKIE) else {
        return Ok(None);
    };
    Ok(state.hub.store.signed_in(cookie.value()).await?)
}

fn refused(status: StatusCode, reason: &str, username: &str) -> Response {
    (
        status,
        Html(views::login_page(Some(reason), username).into_string()),
    )
        .into_response()
}

/// Answers a sign-in attempt past the limit, or None to let it through.
fn throttled(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    account: Option<&str>,
) -> Option<Response> {
    let ip = format!("ip:{}", state.access.client_ip(peer, headers));
    let account = account.map(|name| format!("account:{}", name.trim().to_lowercase()));
    let mut keys = vec![ip.as_str()];
    keys.extend(account.as_deref());
    if state.access.allow_sign_in(&keys) {
        return None;
    }
    let mut response = refused(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many attempts; wait a minute and try again.",
        "",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    Some(response)
}

/// Starts a fresh session for `user` (a new id on every login) and sends them to the chat.
async fn start_session(
    state: &AppState,
    jar: SignedCookieJar,
    user: &User,
) -> Result<Response, AppError> {
    let id = state
        .hub
        .store
        .create_session(&user.id, state.session_ttl_ms)
        .await?;
    let cookie = Cookie::build((SESSION_COOKIE, id))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.secure_cookies)
        .max_age(time::Duration::milliseconds(state.session_ttl_ms))
        .build();
    Ok((jar.add(cookie), Redirect::to("/")).into_response())
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    jar: SignedCookieJar,
    Form(form): Form<Credentials>,
) -> Result<Response, AppError> {
    if let Some(response) = throttled(&state, peer, &headers, Some(&form.username)) {
        return Ok(response);
    }
    let found = state
        .hub
        .store
        .user_credentials(form.username.trim())
        .await?;
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, None),
    };
    let valid = accounts::verify_password(form.password, hash).await;
    match user {
        Some(user) if valid => start_session(&state, jar, &user).await,
        _ => Ok(refused(
            StatusCode::UNAUTHORIZED,
            "Wrong username or password.",
            &form.username,
        )),
    }
}

async fn signup(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    jar: SignedCookieJar,
    Form(form): Form<Credentials>,
) -> Result<Response, AppError> {
    if let Some(response) = throttled(&state, peer, &headers, None) {
        return Ok(response);
    }
    let username = match Username::parse(&form.username) {
        Ok(name) => name,
        Err(e) => return Ok(refused(StatusCode::UNPROCESSABLE_ENTITY, &e.0, "")),
    };
    if let Err(e) = Password::parse(&form.password) {
        return Ok(refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            &e.0,
            username.as_str(),
        ));
    }
    let hash = accounts::hash_password(form.password).await?;
    match state
        .hub
        .store
        .create_user(username.as_str(), None, Some(&hash))
        .await
    {
        Ok(user) => start_session(&state, jar, &user).await,
        Err(StoreError::Conflict) => Ok(refused(
            StatusCode::CONFLICT,
            "That username is taken; pick another.",
            "",
        )),
        Err(e) => Err(e.into()),
    }
}

async fn guest(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    jar: SignedCookieJar,
) -> Result<Response, AppError> {
    if let Some(response) = throttled(&state, peer, &headers, None) {
        return Ok(response);
    }
    let user = accounts::create_guest(&state.hub.store).await?;
    start_session(&state, jar, &user).await
}

async fn logout(State(state): State<AppState>, jar: SignedCookieJar) -> Result<Response, AppError> {
    if let Some(cookie) = jar.get(SESSION_COOKIE) {
        state.hub.store.delete_session(cookie.value()).await?;
    }
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/"));
    Ok((jar, Redirect::to("/login")).into_response())
}
