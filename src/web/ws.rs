//! The chat socket's handshake: a live session and a same-origin page, or no upgrade.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::FutureExt;
use hyper::upgrade::OnUpgrade;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::AppState;
use super::auth::session_digest;
use super::client::origin_is_this_site;
use super::counters::Handshake;
use super::identity::SessionId;
use super::listener::{Slot, Unwrapped, unwrap_upgraded};
use crate::error::AppError;
use crate::socket::{self, Client, Connection, Named, Resume};

pub fn router() -> Router<AppState> {
    Router::new().route("/ws/chat/", get(upgrade))
}

/// A reconnecting client names the room it had open and the newest seq it holds there; a
/// page opened at a room's address names that room (`group`, or `with` a user).
#[derive(Deserialize)]
struct ResumeQuery {
    room: Option<String>,
    after: Option<i64>,
    group: Option<String>,
    with: Option<String>,
}

/// What opening a socket costs from the user's action budget.
const CONNECT_COST: f64 = 1.0;

/// A WebSocket handshake's request (RFC 6455, 4.2.1), checked before anything else is read:
/// the key to answer, and the connection hyper hands over once the answer is sent.
struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket handshake this server takes.
enum NotAHandshake {
    NotGet,
    NotAnUpgrade,
    /// RFC 6455, 4.2.2: refused with the version this server speaks.
    WrongVersion,
    NoKey,
    NotUpgradable,
}

impl IntoResponse for NotAHandshake {
    fn into_response(self) -> Response {
        let reason = match self {
            NotAHandshake::NotGet => {
                return (
                    StatusCode::METHOD_NOT_ALLOWED,
                    "A WebSocket handshake is a GET.",
                )
                    .into_response();
            }
            NotAHandshake::WrongVersion => {
                return (
                    StatusCode::UPGRADE_REQUIRED,
                    [
                        (header::SEC_WEBSOCKET_VERSION, "13"),
                        (header::UPGRADE, "websocket"),
                        (header::CONNECTION, "Upgrade"),
                    ],
                    "Only WebSocket version 13 is spoken here.",
                )
                    .into_response();
            }
            NotAHandshake::NotAnUpgrade => "This address takes WebSocket connections only.",
            NotAHandshake::NoKey => "The Sec-WebSocket-Key header is missing.",
            NotAHandshake::NotUpgradable => "This connection cannot be upgraded.",
        };
        (StatusCode::BAD_REQUEST, reason).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotAHandshake;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(NotAHandshake::NotGet);
        }
        let has = |name, token: &str| {
            parts.headers.get_all(name).iter().any(|value| {
                value.to_str().is_ok_and(|value| {
                    value
                        .split(',')
                        .any(|part| part.trim().eq_ignore_ascii_case(token))
                })
            })
        };
        if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
            return Err(NotAHandshake::NotAnUpgrade);
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13"))
        {
            return Err(NotAHandshake::WrongVersion);
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(NotAHandshake::NoKey)?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotAHandshake::NotUpgradable)?;
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answers the handshake, and once hyper hands the connection over runs `serve` on it.
    fn accept(self, serve: impl FnOnce(Connection, Option<Slot>) + Send + 'static) -> Response {
        let Upgrade { key, on_upgrade } = self;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!(error = %e, "the upgrade did not complete");
                    return;
                }
            };
            match unwrap_upgraded(upgraded) {
                Ok(Unwrapped {
                    stream,
                    read_ahead,
                    slot,
                }) => serve(Connection::new(stream, Vec::from(read_ahead)), slot),
                Err(_) => {
                    tracing::error!("an upgraded connection was not one this server accepted")
                }
            }
        });
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, accept),
            ],
        )
            .into_response()
    }
}

async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    SessionId(session): SessionId,
    headers: HeaderMap,
    Query(resume): Query<ResumeQuery>,
    ws: Upgrade,
) -> Result<Response, AppError> {
    let refuse = |outcome: Handshake, error: AppError| {
        state.counters.handshake(outcome);
        Err(error)
    };
    // Before the session is read: that query also reads the sidebar's rooms.
    if !origin_is_this_site(&headers, state.scheme(&headers)) {
        return refuse(
            Handshake::WrongOrigin,
            AppError::Forbidden("The Origin must be this site."),
        );
    }
    let Some(session) = session else {
        return refuse(Handshake::SignedOut, AppError::SignedOut);
    };
    let signed_in = match state.hub.store.signed_in(&session).await {
        Ok(Some(signed_in)) => signed_in,
        Ok(None) => return refuse(Handshake::SignedOut, AppError::SignedOut),
        Err(e) => return refuse(Handshake::Failed, e.into()),
    };
    // A connect costs a unit of the user's budget, and the history it reads is charged
    // after: a user reconnecting over and over waits until it is paid back.
    if !state.hub.budget.spend(&signed_in.user.id, CONNECT_COST) {
        return refuse(
            Handshake::ReconnectingTooOften,
            AppError::TooMany {
                reason: "Reconnecting too often; wait a moment.",
                retry_after_secs: 5,
            },
        );
    }
    let Some(slot) = state.access.open_socket(&signed_in.user.id) else {
        return refuse(
            Handshake::TooManySockets,
            AppError::TooMany {
                reason: "Too many open chat windows; close one and try again.",
                retry_after_secs: 30,
            },
        );
    };
    state.counters.handshake(Handshake::Accepted);
    let hub = state.hub.clone();
    let tracker = state.sockets.clone();
    let named = match (resume.group, resume.with) {
        (Some(group), _) => Some(Named::Group(group)),
        (None, Some(user)) => Some(Named::Direct(user)),
        (None, None) => None,
    };
    let resume = Resume {
        room: resume.room,
        after_seq: resume.after,
        named,
    };
    let client = Client {
        address: state.access.client_ip(peer, &headers),
        session: Arc::from(session_digest(&session)),
    };
    Ok(ws.accept(move |connection, address_slot| {
        // A task of the socket's own rather than the upgrade's: that one keeps room for
        // everything this closure captured and for the upgrade's state, and it ends here
        // instead. No async block around the session: it would keep its own copy of the
        // connection.
        tracker.spawn(
            socket::run(hub, signed_in, client, connection, resume).map(move |()| {
                drop(slot);
                drop(address_slot);
            }),
        );
    }))
}
