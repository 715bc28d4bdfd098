//! Limits that keep one client from taking more than its share.

use serde_json::json;

use crate::helpers::{Backend, TestApp, session_cookie};
use crate::on_both_databases;

on_both_databases!(
    sign_in_attempts_are_rate_limited,
    sockets_and_rooms_per_user_are_capped
);

async fn sign_in_attempts_are_rate_limited(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--auth-rate-limit", "3"]).await;
    app.signup("ann").await;
    for _ in 0..2 {
        let wrong = app
            .post_form(
                "/login",
                &[("username", "ann"), ("password", "not-her-password")],
            )
            .await;
        assert_eq!(wrong.status(), 401);
    }
    let throttled = app
        .post_form(
            "/login",
            &[("username", "ann"), ("password", "password123")],
        )
        .await;
    assert_eq!(throttled.status(), 429, "even the right password waits");
    assert_eq!(throttled.headers()["retry-after"], "60");
    assert!(session_cookie(&throttled).is_none());
    assert!(
        throttled
            .text()
            .await
            .unwrap()
            .contains("Too many attempts")
    );
    let guest = app.post_form("/guest", &[]).await;
    assert_eq!(guest.status(), 429);
}

async fn sockets_and_rooms_per_user_are_capped(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &["--max-sockets-per-user", "2", "--max-rooms-per-user", "5"],
    )
    .await;
    let ann = app.signup("ann").await;
    let first = app.connect(&ann).await;
    let mut second = app.connect(&ann).await;
    match app.open_socket(&ann, "/ws/chat/").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    first.close().await;
    // A closed socket frees its slot once the server has finished with it.
    let deadline = std::time::Instant::now() + crate::helpers::PATIENCE;
    let _third = loop {
        match app.open_socket(&ann, "/ws/chat/").await {
            Ok(client) => break client,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("the slot was never freed: {e}"),
        }
    };

    // Ann starts in the four default groups; one more is allowed, then no more.
    second
        .act("Create group", json!({ "groupName": "fifth" }))
        .await;
    let title = second.wait_for(|f| f.selector == "#group-name").await;
    assert!(title.html.contains("#fifth"));
    second
        .act("Create group", json!({ "groupName": "sixth" }))
        .await;
    let error = second.wait_for_error().await;
    assert!(error.contains("5 rooms"), "{error}");
    // Rooms she already belongs to stay open to her, and the refused group was not made.
    second.enter_group("python").await;
    let page = app.page(&ann.cookie).await;
    assert!(page.contains("#fifth") && !page.contains("#sixth"));
}
