//! Liveness and readiness for load balancers and orchestrators, and metrics for
//! Prometheus.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::layer::metrics::Gauges;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
}

/// Ready when the database answers, and the channel layer's backend (Redis) if it has
/// one; otherwise 503, with one line per dependency saying which failed. A draining node
/// is not ready whatever its dependencies say: it wants no new clients.
async fn ready(State(state): State<AppState>) -> (StatusCode, String) {
    if state.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned());
    }
    let mut ok = true;
    let mut body = match state.hub.store.ping().await {
        Ok(()) => "database: ok\n".to_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed: database");
            ok = false;
            "database: unreachable\n".to_owned()
        }
    };
    match state.hub.layer.backend_status().await {
        None => {}
        Some((name, Ok(()))) => body.push_str(&format!("{name}: ok\n")),
        Some((name, Err(e))) => {
            tracing::warn!(error = %e, "readiness check failed: {name}");
            ok = false;
            body.push_str(&format!("{name}: unreachable\n"));
        }
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// Prometheus text exposition of this node's counters.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let layer = &state.hub.layer;
    let registry = layer.registry();
    let body = registry.metrics().render(&Gauges {
        open_sockets: registry.socket_count(),
        rooms_subscribed: layer.subscribed(),
        posts_waiting: state.hub.store.posts_waiting(),
        slow_consumer_closes: registry.slow_consumers(),
        presence_failures: state.hub.presence.failures(),
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
