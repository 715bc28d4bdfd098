//! Health checks, the seed-users command and the database pool's size.

use std::time::Duration;

use wirechat::store::Store;

use crate::helpers::{Backend, PATIENCE, TestApp, fresh_database};
use crate::on_both_databases;

on_both_databases!(health_and_readiness, seed_users_creates_accounts);

async fn health_and_readiness(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let health = app.http().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.http().get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().contains("database: ok"));
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
