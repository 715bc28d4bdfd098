//! The chat socket's handshake: a live session and a same-origin page, or no upgrade.

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::FutureExt;
use serde::Deserialize;

use super::AppState;
use super::auth::session_digest;
use super::client::origin_is_this_site;
use super::counters::Handshake;
use super::identity::SessionId;
use crate::error::AppError;
use crate::socket::{self, Client, Named, Resume};

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

/// Read buffer per socket. Client frames are small actions; the default (128 KiB) would
/// dominate the memory of an idle connection, and a rare long message just takes more reads.
const READ_BUFFER: usize = 2 * 1024;
/// Frames are gathered up to this size before a write; it costs nothing while idle.
const WRITE_BUFFER: usize = 32 * 1024;
/// What opening a socket costs from the user's action budget.
const CONNECT_COST: f64 = 1.0;
/// A socket whose unsent data passes this is broken or hostile.
const MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;

async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    SessionId(session): SessionId,
    headers: HeaderMap,
    Query(resume): Query<ResumeQuery>,
    ws: WebSocketUpgrade,
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
    let limit = state.hub.limits.max_frame_bytes;
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
    Ok(ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            // A task of the socket's own rather than axum's upgrade task: that one keeps room
            // for everything its callback captured and for the handshake's state for as long
            // as the callback's future runs (1.9 KB an idle socket, measured), and it ends
            // here instead. No async block around the session: it would keep its own copy of
            // the socket.
            tracker.spawn(
                socket::run(hub, signed_in, client, socket, resume).map(move |()| drop(slot)),
            );
            std::future::ready(())
        })
        .into_response())
}
