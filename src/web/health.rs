//! Liveness and readiness for load balancers and orchestrators.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
}

/// Ready when the database answers; otherwise 503 with the reason.
async fn ready(State(state): State<AppState>) -> (StatusCode, String) {
    match state.hub.store.ping().await {
        Ok(()) => (StatusCode::OK, "database: ok\n".into()),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "database: unreachable\n".into(),
            )
        }
    }
}
