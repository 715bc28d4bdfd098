//! Health checks and the seed-users command.

use crate::helpers::{Backend, TestApp, fresh_database};
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
