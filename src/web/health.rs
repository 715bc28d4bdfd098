//! Liveness and readiness for load balancers and orchestrators, and metrics for
//! Prometheus (served on the public address, or on a listener of their own).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use std::fmt::Write;

use crate::layer::metrics::Gauges;
use crate::process_stats::ProcessStats;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
}

pub fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
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

/// Prometheus text exposition of this node's counters, its HTTP side's, its database
/// pool's and the process's own.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let layer = &state.hub.layer;
    let registry = layer.registry();
    let store = &state.hub.store;
    let mut body = registry.metrics().render(&Gauges {
        open_sockets: registry.socket_count(),
        rooms_subscribed: layer.subscribed(),
        posts_waiting: store.posts_waiting(),
        slow_consumer_closes: registry.slow_consumers(),
        presence_failures: state.hub.presence.failures(),
    });
    state.counters.render(&mut body);
    let pool = [
        (
            "wirechat_db_pool_max_connections",
            "Most database connections this node's pool may hold (WIRECHAT_DB_POOL_SIZE).",
            u64::from(store.pool_size()),
        ),
        (
            "wirechat_db_pool_connections",
            "Database connections the pool holds now, in use or idle.",
            u64::from(store.connections()),
        ),
        (
            "wirechat_db_pool_idle_connections",
            "Database connections the pool holds that nothing uses now.",
            store.idle_connections() as u64,
        ),
    ];
    for (name, help, value) in pool {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    let (inline, pooled) = store.session_reads();
    let _ = writeln!(
        body,
        "# HELP wirechat_session_reads_total Sessions read for connects and pages, by where: \
         on the runtime's thread (SQLite), or through the pool.\n\
         # TYPE wirechat_session_reads_total counter\n\
         wirechat_session_reads_total{{on=\"runtime_thread\"}} {inline}\n\
         wirechat_session_reads_total{{on=\"pool\"}} {pooled}"
    );
    let _ = writeln!(
        body,
        "# HELP wirechat_build_info The running version (the value is always 1).\n\
         # TYPE wirechat_build_info gauge\nwirechat_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(stats) = ProcessStats::read() {
        stats.render(&mut body);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
