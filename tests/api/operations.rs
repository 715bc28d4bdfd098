//! Health checks, the seed-users command and the database pool's size.

use std::time::Duration;

use wirechat::store::Store;

use crate::helpers::{Backend, PATIENCE, Received, TestApp, fresh_database};
use crate::on_both_databases;
use crate::process::start_node;

on_both_databases!(
    health_and_readiness,
    seed_users_creates_accounts,
    a_draining_node_is_not_ready_but_still_serves,
);

async fn health_and_readiness(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let health = app.http().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.http().get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().contains("database: ok"));
}

/// `/readyz`'s status, asked until it is `wanted` (bounded): the node's state changes
/// with no event a client can wait for.
async fn wait_for_readiness(app: &TestApp, wanted: u16) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let ready = app.http().get(app.url("/readyz")).send().await.unwrap();
        let status = ready.status().as_u16();
        if status == wanted {
            return ready.text().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Told to shut down, a node first only stops being ready, so a load balancer can send
/// new clients elsewhere; it serves its sockets and new requests through the drain, and
/// then tells its sockets to reconnect (1012).
async fn a_draining_node_is_not_ready_but_still_serves(backend: Backend) {
    let mut app = TestApp::spawn_with(backend, &["--drain-ms", "4000"]).await;
    let ann = app.signup("ann").await;
    let bob = app.signup("bob").await;
    let mut ann_socket = app.connect(&ann).await;
    let mut bob_socket = app.connect(&bob).await;
    ann_socket.enter_group("python").await;
    bob_socket.enter_group("python").await;
    wait_for_readiness(&app, 200).await;

    app.begin_shutdown();
    assert!(wait_for_readiness(&app, 503).await.contains("draining"));
    let health = app.http().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "alive while draining");
    let page = app.http().get(app.url("/login")).send().await.unwrap();
    assert_eq!(
        page.status(),
        200,
        "new requests are answered while draining"
    );
    ann_socket.say("said while draining").await;
    bob_socket.wait_for_message("said while draining").await;

    for mut socket in [ann_socket, bob_socket] {
        let close = loop {
            if let Received::Closed(close) = socket.receive().await {
                break close;
            }
        };
        assert_eq!(
            close.map(|c| u16::from(c.code)),
            Some(1012),
            "{}",
            socket.username
        );
    }
    app.stop().await;
}

async fn seed_users_creates_accounts(backend: Backend) {
    let url = fresh_database(backend).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wirechat"))
        .args([
            "seed-users",
            "--count",
            "7",
            "--password",
            "seeded-pass",
            "--database-url",
            &url,
        ])
        .output()
        .expect("run wirechat seed-users");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("created 7 users"));

    // The generated users exist and can log in with the given password.
    let app = TestApp::start(url.clone(), vec![]).await;
    let names: Vec<String> = {
        use sqlx::Row;
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        sqlx::query("SELECT username FROM users WHERE email IS NOT NULL")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("username"))
            .collect()
    };
    assert_eq!(names.len(), 7);
    let login = app
        .post_form(
            "/login",
            &[("username", &names[0]), ("password", "seeded-pass")],
        )
        .await;
    assert_eq!(login.status(), 303);
}

/// The pool's size is what `--db-pool-size` says: with the table a statement needs locked,
/// eight statements at once hold five connections, and the other three wait for one of
/// those instead of opening more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_holds_at_most_its_size() {
    use sqlx::{Connection, Executor, Row};
    let url = fresh_database(Backend::Postgres).await;
    match Store::connect_with(&url, Some(4)).await {
        Err(e) => assert!(e.to_string().contains("at least 5"), "{e}"),
        Ok(_) => panic!("a pool no bigger than the writers was accepted"),
    }
    let store = Store::connect_with(&url, Some(5)).await.expect("a store");
    assert_eq!(store.pool_size(), 5);

    let mut locker = sqlx::PgConnection::connect(&url).await.expect("connect");
    locker.execute("BEGIN").await.expect("begin");
    locker
        .execute("LOCK TABLE settings IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let statements: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.shared_secret().await })
        })
        .collect();

    // Watched from a connection of its own: a transaction sees one snapshot of the
    // activity, taken at its first look.
    let mut watcher = sqlx::PgConnection::connect(&url).await.expect("connect");
    let locker_pid: i32 = sqlx::query("SELECT pg_backend_pid()")
        .fetch_one(&mut locker)
        .await
        .expect("pid")
        .get(0);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (waiting, open) = loop {
        let row = sqlx::query(
            "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'), count(*) \
             FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> $1",
        )
        .bind(locker_pid)
        .fetch_one(&mut watcher)
        .await
        .expect("pg_stat_activity");
        let (waiting, open): (i64, i64) = (row.get(0), row.get(1));
        if waiting >= 5 || tokio::time::Instant::now() > deadline {
            break (waiting, open);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (waiting, open),
        (5, 5),
        "statements waiting, connections open"
    );
    assert_eq!(store.connections(), 5, "the pool opened more than its size");

    locker.execute("ROLLBACK").await.expect("unlock");
    for statement in statements {
        statement
            .await
            .expect("task")
            .expect("every statement done once a connection was free");
    }
}

/// SIGTERM starts the drain; a second one stops the node without waiting it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_a_second_one_stops_at_once() {
    let url = fresh_database(Backend::Sqlite).await;
    // A drain far longer than the test's patience: only the second signal can end it.
    let drain = (PATIENCE * 10).as_millis().to_string();
    let mut node = start_node("127.0.0.1:0", &url, &["--drain-ms".into(), drain], "node").await;
    let app = TestApp::at(node.addr, &url);
    wait_for_readiness(&app, 200).await;
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    unsafe {
        libc::kill(node.process.child.id() as libc::pid_t, libc::SIGTERM);
    }
    assert!(wait_for_readiness(&app, 503).await.contains("draining"));
    assert!(node.process.child.try_wait().expect("try_wait").is_none());
    node.process.terminate().await;
}
