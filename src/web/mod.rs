//! HTTP: pages, authentication, the WebSocket upgrade, static assets and health checks.
//! Each submodule exposes a `router()`; they are merged here with the security layers that
//! apply to every response.

mod assets;
mod auth;
mod client;
mod counters;
mod health;
mod identity;
mod limits;
pub mod listener;
mod pages;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::Key;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::compression::CompressionLayer;

use crate::error::AppError;
use crate::hub::Hub;

pub use client::Proxies;
pub use counters::HttpCounters;
pub use identity::SESSION_COOKIE;
pub use limits::{AccessLimits, LoginGuard};

#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub cookie_key: Key,
    /// The key before `cookie_key`, while the secret is rotated (see `identity`).
    pub previous_cookie_key: Option<Key>,
    pub session_ttl_ms: i64,
    pub secure_cookies: bool,
    /// Every socket session, so shutdown can wait for them to close.
    pub sockets: TaskTracker,
    /// Cancelled when the node starts to drain (and when it stops): readiness fails from
    /// then on, while everything else is served as before.
    pub draining: CancellationToken,
    pub access: Arc<AccessLimits>,
    /// Responses and handshakes, for `/metrics`.
    pub counters: Arc<HttpCounters>,
}

impl FromRef<AppState> for Key {
    fn from_ref(state: &AppState) -> Key {
        state.cookie_key.clone()
    }
}

/// The public router. `/metrics` is on it unless `metrics_apart`: then only
/// `metrics_router` serves it, on a listener of its own.
pub fn router(state: AppState, metrics_apart: bool) -> Router {
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
        .merge(if metrics_apart {
            Router::new()
        } else {
            health::metrics_router()
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            same_origin_posts,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            identity::resign_previous_cookies,
        ))
        .layer(middleware::map_response(security_headers))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

/// `/metrics` alone, for a listener on the operators' network.
pub fn metrics_router(state: AppState) -> Router {
    health::metrics_router().with_state(state)
}

async fn count_responses(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    state.counters.response(response.status());
    response
}

impl AppState {
    /// The scheme the browser used to reach this site.
    fn scheme(&self, headers: &axum::http::HeaderMap) -> &'static str {
        self.access.proxies.scheme(headers, self.secure_cookies)
    }
}

/// Refuses state-changing requests that another site's page started (CSRF): a POST must
/// carry this site's `Origin`, or, with no `Origin`, the browser's word that it was sent
/// from this site (`Sec-Fetch-Site`). An opaque origin (`null`) is another site.
async fn same_origin_posts(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == Method::POST
        && client::sender(request.headers(), state.scheme(request.headers()))
            == client::Sender::Elsewhere
    {
        // Not the headers: a client could fill the log with them.
        tracing::debug!(
            path = request.uri().path(),
            "refused a POST that did not come from this site's pages"
        );
        return AppError::Forbidden(
            "This form must be sent from wirechat's own page; cross-site submissions are refused.",
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
