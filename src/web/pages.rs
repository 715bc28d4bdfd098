//! The chat page (the sign-in page is with the sign-in forms, in `auth`).

use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;

use super::AppState;
use super::identity::SignedInUser;
use crate::error::AppError;
use crate::store::SignedIn;
use crate::views;

pub fn router() -> Router<AppState> {
    // A room's address is the chat page too; the page's script reads which room.
    Router::new()
        .route("/", get(chat))
        .route("/r/{group}", get(chat))
        .route("/r/{group}/", get(chat))
        .route("/dm/{user}", get(chat))
        .route("/dm/{user}/", get(chat))
}

/// The chat page for a signed-in user. The socket fills in the active room once it opens.
async fn chat(
    State(state): State<AppState>,
    SignedInUser(signed_in): SignedInUser,
) -> Result<Response, AppError> {
    let Some(SignedIn {
        user: me,
        rooms,
        groups,
    }) = signed_in
    else {
        return Ok(Redirect::to("/login").into_response());
    };
    // The node's capped list, as a socket is shown: reading everyone online from presence
    // would cost every page load as much as there are people.
    let (online, more) = state.hub.roster.snapshot();
    let page = views::chat_page(
        &views::ChatView {
            me: &me,
            groups: &groups,
            rooms: &rooms,
            online: views::Online::People(&online),
        },
        more,
        state.hub.limits.max_message_chars,
    );
    Ok(Html(page.into_string()).into_response())
}
