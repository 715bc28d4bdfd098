//! Sign up, log in, continue as guest, log out, and finding who a request comes from.
//!
//! Sessions live in the database; the cookie holds only the session id, signed with the
//! node's key so a forged id is rejected before any lookup.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::Router;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::post;
use axum_extra::extract::SignedCookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use serde::Deserialize;

use super::AppState;
use super::identity::{CurrentUser, SESSION_COOKIE, SessionId};
use super::limits::{LoginGuard, LoginWait};
use crate::accounts;
use crate::chat::names::{Password, Username};
use crate::error::AppError;
use crate::layer::{Event, user_group};
use crate::model::User;
use crate::store::{StoreError, now_ms};
use crate::views::{self, SignInForm};

/// Names the account this browser last logged in to (signed): such a browser may still log
/// in while the account refuses new ones after many failed attempts.
const KNOWN_COOKIE: &str = "wirechat_known";
/// How long a browser stays known.
const KNOWN_FOR: time::Duration = time::Duration::days(400);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/login", post(login).get(login_form))
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

/// The sign-in page; someone signed in already goes to the chat.
async fn login_form(CurrentUser(user): CurrentUser) -> Response {
    if user.is_some() {
        return Redirect::to("/").into_response();
    }
    Html(views::login_page(None, SignInForm::LogIn("")).into_string()).into_response()
}

/// What names a session to the sockets opened with it: a digest, so that the id itself (the
/// cookie's secret) never travels through the channel layer.
pub fn session_digest(session_id: &str) -> String {
    use blake2::{Blake2s256, Digest};
    hex::encode(&Blake2s256::digest(session_id.as_bytes())[..16])
}

fn refused(status: StatusCode, reason: &str, form: SignInForm<'_>) -> Response {
    (
        status,
        Html(views::login_page(Some(reason), form).into_string()),
    )
        .into_response()
}

/// Answers a sign-in attempt past its address's limit, or None to let it through.
fn throttled(state: &AppState, ip: IpAddr) -> Option<Response> {
    if state.access.allow_sign_in(ip) {
        return None;
    }
    Some(too_many(
        "Too many attempts; wait a minute and try again.",
        Duration::from_secs(60),
    ))
}

fn too_many(reason: &str, retry_after: Duration) -> Response {
    let mut response = refused(StatusCode::TOO_MANY_REQUESTS, reason, SignInForm::LogIn(""));
    let seconds = retry_after.as_secs().max(1).to_string();
    if let Ok(value) = HeaderValue::from_str(&seconds) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The cookie that carries session `id` (to be signed by the jar it goes in).
pub(super) fn session_cookie(state: &AppState, id: String) -> Cookie<'static> {
    Cookie::build((SESSION_COOKIE, id))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.secure_cookies)
        .max_age(time::Duration::milliseconds(state.session_ttl_ms))
        .build()
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
    let cookie = session_cookie(state, id);
    let known = Cookie::build((KNOWN_COOKIE, user.id.clone()))
        .path("/login")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(state.secure_cookies)
        .max_age(KNOWN_FOR)
        .build();
    Ok((jar.add(cookie).add(known), Redirect::to("/")).into_response())
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    jar: SignedCookieJar,
    Form(form): Form<Credentials>,
) -> Result<Response, AppError> {
    let ip = state.access.client_ip(peer, &headers);
    if let Some(response) = throttled(&state, ip) {
        return Ok(response);
    }
    // No account has a name outside the rules, nor a password longer than they allow:
    // such an attempt is answered before any lookup or hashing, and nothing of it is kept.
    let Ok(username) = Username::parse(&form.username) else {
        return Ok(wrong_credentials(""));
    };
    if form.password.chars().count() > Password::MAX_CHARS {
        return Ok(wrong_credentials(username.as_str()));
    }
    let found = state.hub.store.user_credentials(&username).await?;
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, None),
    };
    let address = ip.to_string();
    if let (Some(user), Some(guard)) = (&user, state.access.login_guard()) {
        let since = now_ms() - LoginGuard::ACCOUNT_WINDOW.as_millis() as i64;
        let failures = state
            .hub
            .store
            .login_failures(&user.id, &address, since)
            .await?;
        let known = jar.get(KNOWN_COOKIE).is_some_and(|c| c.value() == user.id);
        match guard.wait(&failures, known, now_ms()) {
            Some(LoginWait::Address(wait)) => {
                return Ok(too_many(
                    "Too many failed attempts from here; wait a while and try again.",
                    wait,
                ));
            }
            Some(LoginWait::Account(wait)) => {
                return Ok(too_many(
                    "After many failed attempts this account takes no log-ins from new \
                     browsers for a while; try again later, or from a browser you have \
                     logged in with before.",
                    wait,
                ));
            }
            None => {}
        }
    }
    let valid = accounts::verify_password(form.password, hash).await;
    match user {
        Some(user) if valid => {
            if state.access.login_guard().is_some() {
                state
                    .hub
                    .store
                    .clear_login_failures(&user.id, &address)
                    .await?;
            }
            start_session(&state, jar, &user).await
        }
        Some(user) => {
            if state.access.login_guard().is_some() {
                state
                    .hub
                    .store
                    .record_login_failure(
                        &user.id,
                        &address,
                        LoginGuard::ACCOUNT_WINDOW.as_millis() as i64,
                    )
                    .await?;
            }
            Ok(wrong_credentials(username.as_str()))
        }
        None => Ok(wrong_credentials(username.as_str())),
    }
}

fn wrong_credentials(username: &str) -> Response {
    refused(
        StatusCode::UNAUTHORIZED,
        "Wrong username or password.",
        SignInForm::LogIn(username),
    )
}

async fn signup(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    jar: SignedCookieJar,
    Form(form): Form<Credentials>,
) -> Result<Response, AppError> {
    if let Some(response) = throttled(&state, state.access.client_ip(peer, &headers)) {
        return Ok(response);
    }
    let username = match Username::parse(&form.username) {
        Ok(name) => name,
        // The name is put back (escaped) unless it is far too long to be one.
        Err(e) => {
            let name = if form.username.len() <= 4 * Username::MAX_CHARS {
                form.username.as_str()
            } else {
                ""
            };
            return Ok(refused(
                StatusCode::UNPROCESSABLE_ENTITY,
                &e.0,
                SignInForm::SignUp(name),
            ));
        }
    };
    if let Err(e) = Password::parse(&form.password) {
        return Ok(refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            &e.0,
            SignInForm::SignUp(username.as_str()),
        ));
    }
    let hash = accounts::hash_password(form.password).await?;
    match state
        .hub
        .store
        .create_user(&username, None, Some(&hash))
        .await
    {
        Ok(user) => start_session(&state, jar, &user).await,
        Err(StoreError::Conflict) => Ok(refused(
            StatusCode::CONFLICT,
            "That username is taken (or one too like it is); pick another.",
            SignInForm::SignUp(username.as_str()),
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
    if let Some(response) = throttled(&state, state.access.client_ip(peer, &headers)) {
        return Ok(response);
    }
    let user = accounts::create_guest(&state.hub.store).await?;
    start_session(&state, jar, &user).await
}

async fn logout(
    State(state): State<AppState>,
    SessionId(session): SessionId,
    jar: SignedCookieJar,
) -> Result<Response, AppError> {
    if let Some(session) = session
        && let Some(user) = state.hub.store.session_user(&session).await?
    {
        state.hub.store.delete_session(&session).await?;
        // Every socket opened with this session closes, on every node.
        let ended = Event::SessionEnded {
            session: Arc::from(session_digest(&session)),
        };
        if let Err(e) = state.hub.layer.publish(&user_group(&user.id), ended).await {
            tracing::warn!(error = %e, "the end of a session was not published");
        }
    }
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/"));
    Ok((jar, Redirect::to("/login")).into_response())
}
