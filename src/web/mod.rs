//! HTTP: pages, authentication, the WebSocket upgrade, static assets and health checks.
//! Each submodule exposes a `router()`; they are merged here with the security layers that
//! apply to every response.

mod assets;
mod auth;
mod health;
mod limits;
mod pages;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::Key;
use tokio_util::task::TaskTracker;
use tower_http::compression::CompressionLayer;

use crate::hub::Hub;

pub use auth::SESSION_COOKIE;
pub use limits::AccessLimits;

#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub cookie_key: Key,
    pub session_ttl_ms: i64,
    pub secure_cookies: bool,
    /// Every socket session, so shutdown can wait for them to close.
    pub sockets: TaskTracker,
    pub access: Arc<AccessLimits>,
}

impl FromRef<AppState> for Key {
    fn from_ref(state: &AppState) -> Key {
        state.cookie_key.clone()
    }
}

pub fn router(state: AppState) -> Router {
    // Pages and assets are text that compresses well; the socket handshake stays as it is.
    let compressed = Router::new()
        .merge(pages::router())
        .merge(assets::router())
        .layer(CompressionLayer::new());
    Router::new()
        .merge(compressed)
        .merge(auth::router())
        .merge(ws::router())
        .merge(health::router())
        .layer(middleware::from_fn(same_origin_posts))
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

/// True when the request's `Origin` names the host it was sent to. Browsers send `Origin`
/// with every cross-site POST and WebSocket handshake, so this stops forged requests.
pub(crate) fn origin_matches_host(headers: &HeaderMap) -> Option<bool> {
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok())?;
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))?;
    Some(authority.eq_ignore_ascii_case(host))
}

/// Refuses state-changing requests that another site's page started (CSRF).
async fn same_origin_posts(request: Request, next: Next) -> Response {
    if request.method() == Method::POST && origin_matches_host(request.headers()) == Some(false) {
        return (
            StatusCode::FORBIDDEN,
            "Cross-site form submissions are refused.",
        )
            .into_response();
    }
    next.run(request).await
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
