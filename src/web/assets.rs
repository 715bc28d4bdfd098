//! The page's stylesheet and script, built into the binary so it runs from anywhere.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;

const CHAT_JS: &str = include_str!("../../static/chat.js");
const CHAT_CSS: &str = include_str!("../../static/chat.css");
const FAVICON: &str = include_str!("../../static/favicon.svg");

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/static/chat.js",
            get(|| async { asset("text/javascript; charset=utf-8", CHAT_JS) }),
        )
        .route(
            "/static/chat.css",
            get(|| async { asset("text/css; charset=utf-8", CHAT_CSS) }),
        )
        .route(
            "/static/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON) }),
        )
        .route(
            "/favicon.ico",
            get(|| async { axum::response::Redirect::permanent("/static/favicon.svg") }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Short-lived: the assets are not fingerprinted, and a deploy should show up soon.
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
}
