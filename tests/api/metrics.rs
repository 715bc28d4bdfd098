//! What `/metrics` tells operators: the process's memory, descriptors and CPU, the
//! version, the database pool and where sessions are read, HTTP responses and socket
//! handshakes (refusals by reason), on the public address or on a listener of its own.

use std::net::SocketAddr;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{Backend, TestApp, fresh_database, metric};
use crate::on_both_databases;
use crate::process::start_node;

on_both_databases!(the_pool_and_responses_are_counted);

/// `/metrics` at `addr`, as text.
async fn scrape(addr: SocketAddr) -> String {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("metrics body")
}

/// A handshake's status code, with the `origin` and `cookie` given (or none).
async fn handshake(app: &TestApp, origin: Option<&str>, cookie: Option<&str>) -> u16 {
    let mut request = format!("ws://{}/ws/chat/", app.addr)
        .into_client_request()
        .expect("request");
    let headers = request.headers_mut();
    for (name, value) in [("origin", origin), ("cookie", cookie)] {
        if let Some(value) = value {
            headers.insert(name, HeaderValue::from_str(value).expect("header"));
        }
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("handshake: {e}"),
    }
}

/// The node's own process: resident memory and descriptors above zero (and below the
/// limit), CPU time counted, and the version it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reports_its_process_and_version() {
    let url = fresh_database(Backend::Sqlite).await;
    let node = start_node("127.0.0.1:0", &url, &[], "node").await;
    let rss = metric(node.addr, "process_resident_memory_bytes").await;
    let (resident_kib, _) = node.memory_kib();
    assert!(rss > 0.0, "{rss}");
    // The same figure /proc gives the test, give or take what changed between the reads.
    let kib = rss / 1024.0;
    assert!(
        (kib - resident_kib as f64).abs() < resident_kib as f64 * 0.5,
        "{kib} KiB reported, {resident_kib} KiB in /proc"
    );
    let fds = metric(node.addr, "process_open_fds").await;
    let max_fds = metric(node.addr, "process_max_fds").await;
    assert!(fds > 0.0 && fds < max_fds, "{fds} of {max_fds}");
    assert!(metric(node.addr, "process_cpu_seconds_total").await >= 0.0);
    let text = scrape(node.addr).await;
    let build = format!(
        "wirechat_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&build), "{text}");
}

async fn the_pool_and_responses_are_counted(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--db-pool-size", "6"]).await;
    let max = metric(app.addr, "wirechat_db_pool_max_connections").await;
    assert_eq!(max, 6.0);
    let open = metric(app.addr, "wirechat_db_pool_connections").await;
    let idle = metric(app.addr, "wirechat_db_pool_idle_connections").await;
    assert!(
        open >= 1.0 && idle <= open && open <= max,
        "{open} open, {idle} idle"
    );

    let class = |c: &'static str| format!("wirechat_http_responses_total{{class=\"{c}\"}}");
    let (ok, missing) = (
        metric(app.addr, &class("2xx")).await,
        metric(app.addr, &class("4xx")).await,
    );
    let login = app.http().get(app.url("/login")).send().await.unwrap();
    assert_eq!(login.status(), 200);
    let nothing = app
        .http()
        .get(app.url("/no-such-page"))
        .send()
        .await
        .unwrap();
    assert_eq!(nothing.status(), 404);
    // A scrape is a 2xx too, counted once answered: the two above, and the page.
    assert_eq!(metric(app.addr, &class("2xx")).await, ok + 3.0);
    assert_eq!(metric(app.addr, &class("4xx")).await, missing + 1.0);

    // A page read on SQLite reads its session on the runtime's thread; on PostgreSQL,
    // through the pool.
    let on = |place: &'static str| format!("wirechat_session_reads_total{{on=\"{place}\"}}");
    let ann = app.signup("ann").await;
    let (inline, pooled) = (
        metric(app.addr, &on("runtime_thread")).await,
        metric(app.addr, &on("pool")).await,
    );
    app.page(&ann.cookie).await;
    let (inline_after, pooled_after) = (
        metric(app.addr, &on("runtime_thread")).await,
        metric(app.addr, &on("pool")).await,
    );
    match backend {
        Backend::Sqlite => assert_eq!((inline_after, pooled_after), (inline + 1.0, pooled)),
        Backend::Postgres => assert_eq!((inline_after, pooled_after), (0.0, pooled + 1.0)),
    }
}

/// Every refused handshake counts under its reason, and an accepted one as accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_counted_by_outcome_and_reason() {
    let app = TestApp::spawn_with(Backend::Sqlite, &["--max-sockets-per-user", "1"]).await;
    let ann = app.signup("ann").await;
    let series = |labels: &str| format!("wirechat_ws_handshakes_total{{{labels}}}");
    let accepted = series(r#"outcome="accepted",reason="""#);
    let origin = series(r#"outcome="refused",reason="origin""#);
    let signed_out = series(r#"outcome="refused",reason="signed_out""#);
    let too_many = series(r#"outcome="refused",reason="sockets_per_user""#);
    for name in [&accepted, &origin, &signed_out, &too_many] {
        assert_eq!(metric(app.addr, name).await, 0.0, "{name}");
    }

    let elsewhere = handshake(&app, Some("http://evil.example"), Some(&ann.cookie)).await;
    assert_eq!(elsewhere, 403);
    assert_eq!(metric(app.addr, &origin).await, 1.0);
    assert_eq!(handshake(&app, Some(&app.origin()), None).await, 401);
    assert_eq!(metric(app.addr, &signed_out).await, 1.0);
    let socket = app.connect(&ann).await;
    assert_eq!(metric(app.addr, &accepted).await, 1.0);
    assert_eq!(
        handshake(&app, Some(&app.origin()), Some(&ann.cookie)).await,
        429
    );
    assert_eq!(metric(app.addr, &too_many).await, 1.0);
    assert_eq!(metric(app.addr, &accepted).await, 1.0);
    let ones = metric(app.addr, "wirechat_http_responses_total{class=\"1xx\"}").await;
    assert_eq!(ones, 1.0, "the one socket opened");
    socket.close().await;
}

/// With `--metrics-addr`, `/metrics` is served there and no longer on the public port,
/// which serves everything else as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_have_a_listener_of_their_own() {
    let app = TestApp::spawn_with(Backend::Sqlite, &["--metrics-addr", "127.0.0.1:0"]).await;
    let metrics_addr = app.metrics_addr.expect("a metrics listener");
    assert_ne!(metrics_addr, app.addr);
    let public = app.http().get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404, "metrics left the public port");
    let ann = app.signup("ann").await;
    let _socket = app.connect(&ann).await;
    assert_eq!(metric(metrics_addr, "wirechat_open_sockets").await, 1.0);
    let health = app.http().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // The public port's responses are counted; the scrapes on the other one are not.
    let scraped = metric(metrics_addr, "wirechat_http_responses_total{class=\"2xx\"}").await;
    assert_eq!(
        metric(metrics_addr, "wirechat_http_responses_total{class=\"2xx\"}").await,
        scraped
    );
}
