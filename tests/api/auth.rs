//! Sign up, log in, guests, log out, and who may open the chat socket.

use crate::helpers::{Backend, TestApp, fresh_database, session_cookie};
use crate::on_both_databases;

on_both_databases!(
    signup_login_logout,
    bad_signups_say_why,
    guests_get_a_generated_name,
    socket_needs_session_and_origin,
    sessions_survive_restart,
    a_rotated_secret_signs_nobody_out,
);

async fn signup_login_logout(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let http = app.http();

    let anonymous = http.get(app.url("/")).send().await.unwrap();
    assert_eq!(anonymous.status(), 303);
    assert_eq!(anonymous.headers()["location"], "/login");

    let signup = app
        .post_form(
            "/signup",
            &[("username", "ann"), ("password", "password123")],
        )
        .await;
    assert_eq!(signup.status(), 303);
    assert_eq!(signup.headers()["location"], "/");
    let set_cookie = signup
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("wirechat_session="))
        .expect("a session cookie")
        .to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Lax"), "{set_cookie}");

    let taken = app
        .post_form(
            "/signup",
            &[("username", "ann"), ("password", "password123")],
        )
        .await;
    assert_eq!(taken.status(), 409);
    assert!(session_cookie(&taken).is_none());

    let wrong = app
        .post_form(
            "/login",
            &[("username", "ann"), ("password", "wrong-password")],
        )
        .await;
    assert_eq!(wrong.status(), 401);
    assert!(session_cookie(&wrong).is_none());
    let unknown = app
        .post_form(
            "/login",
            &[("username", "nobody"), ("password", "password123")],
        )
        .await;
    assert_eq!(unknown.status(), 401);

    let login = app
        .post_form(
            "/login",
            &[("username", "ann"), ("password", "password123")],
        )
        .await;
    assert_eq!(login.status(), 303);
    let cookie = session_cookie(&login).unwrap();
    let first_cookie = session_cookie(&signup).unwrap();
    assert_ne!(cookie, first_cookie, "each login starts a new session");

    let page = app.get_as("/", &cookie).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<bdi id="logged-user">ann</bdi>"#),
        "{html}"
    );
    for group in ["#hi", "#python", "#events", "#off-topic"] {
        assert!(html.contains(group), "{group} missing from the sidebar");
    }

    let logout = app
        .http()
        .post(app.url("/logout"))
        .header("cookie", &cookie)
        .header("origin", app.origin())
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 303);
    let after = app.get_as("/", &cookie).await;
    assert_eq!(
        after.status(),
        303,
        "a logged-out session is dead everywhere"
    );
    let logged_out = crate::helpers::TestUser {
        username: "ann".into(),
        cookie: cookie.clone(),
    };
    match app.open_socket(&logged_out, "/ws/chat/").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401, "nor does it open a socket")
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    // The other session (from sign-up) is still alive.
    let other = app.get_as("/", &first_cookie).await;
    assert_eq!(other.status(), 200);
}

async fn bad_signups_say_why(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let long_name = "a".repeat(10_000);
    let long_password = "p".repeat(10_000);
    for (username, password, reason) in [
        ("ab", "password123", "3 to 32 characters"),
        ("<script>", "password123", "letters, digits"),
        ("ann lee", "password123", "letters, digits"),
        ("ann", "short", "at least 8"),
        ("", "", "3 to 32 characters"),
        ("ann\0lee", "password123", "letters, digits"),
        ("\u{202e}nna", "password123", "letters, digits"),
        ("ännä", "password123", "letters, digits"),
        ("🙂🙂🙂", "password123", "letters, digits"),
        (long_name.as_str(), "password123", "3 to 32 characters"),
        ("ann", long_password.as_str(), "at most 256"),
    ] {
        let response = app
            .post_form("/signup", &[("username", username), ("password", password)])
            .await;
        assert_eq!(response.status(), 422, "{username:?}/{password:?}");
        assert!(session_cookie(&response).is_none());
        let body = response.text().await.unwrap();
        assert!(body.contains(reason), "{username:?}: {body}");
        assert!(!body.contains("<script>"), "input is escaped");
    }
    // Cross-site form posts are refused outright.
    let forged = app
        .http()
        .post(app.url("/signup"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "http://evil.example")
        .body("username=mallory&password=password123")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
}

async fn guests_get_a_generated_name(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let guest = app.post_form("/guest", &[]).await;
    assert_eq!(guest.status(), 303);
    let cookie = session_cookie(&guest).expect("guest session");
    let html = app.page(&cookie).await;
    let open = r#"<bdi id="logged-user">"#;
    let start = html.find(open).expect("the user's name") + open.len();
    let name = &html[start..start + html[start..].find('<').unwrap()];
    assert!(name.len() >= 3, "generated name {name:?}");
}

async fn socket_needs_session_and_origin(backend: Backend) {
    use tokio_tungstenite::tungstenite::Error;
    let app = TestApp::spawn(backend).await;
    let ann = app.signup("ann").await;

    let nobody = crate::helpers::TestUser {
        username: "nobody".into(),
        cookie: "wirechat_session=forged".into(),
    };
    match app.open_socket(&nobody, "/ws/chat/").await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }

    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/ws/chat/",
            app.addr
        ))
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", ann.cookie.parse().unwrap());
    request
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }

    // With both, the socket opens and fills the tutorial's landmarks.
    let mut client = app.open_socket(&ann, "/ws/chat/").await.unwrap();
    let user = client.wait_for(|f| f.selector == "#logged-user").await;
    assert_eq!(user.html, "ann");
    let room = client.wait_for(|f| f.selector == "#group-name").await;
    assert!(room.html.contains("#hi"), "{}", room.html);
    let list = client.wait_for(|f| f.selector == "#messages-list").await;
    assert_eq!(list.swap, "innerHTML");
}

async fn sessions_survive_restart(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = app.signup("ann").await;
    let mut client = app.connect(&ann).await;
    client.say("before the restart").await;
    client.wait_for_message("before the restart").await;
    client.close().await;

    let app = app.restart().await;
    let page = app.get_as("/", &ann.cookie).await;
    assert_eq!(
        page.status(),
        200,
        "the cookie key and session outlive a restart"
    );
    let mut client = app.connect(&ann).await;
    let history = client.wait_for(|f| f.selector == "#messages-list").await;
    assert!(
        history.html.contains("before the restart"),
        "{}",
        history.html
    );
}

/// Rotating the cookie secret: with the old one as the previous secret, a browser's cookie
/// is still taken and comes back signed with the new one, which then works alone.
async fn a_rotated_secret_signs_nobody_out(backend: Backend) {
    let (old, new) = ("o".repeat(32), "n".repeat(32));
    let database_url = fresh_database(backend).await;
    let mut app = TestApp::start(database_url.clone(), vec!["--secret".into(), old.clone()]).await;
    let ann = app.signup("ann").await;
    app.stop().await;

    // The new secret alone does not know the old cookies: that is what rotation is for.
    let mut alone =
        TestApp::start(database_url.clone(), vec!["--secret".into(), new.clone()]).await;
    assert_eq!(alone.get_as("/", &ann.cookie).await.status(), 303);
    alone.stop().await;

    let mut rotating = TestApp::start(
        database_url.clone(),
        vec![
            "--secret".into(),
            new.clone(),
            "--previous-secret".into(),
            old,
        ],
    )
    .await;
    let page = rotating.get_as("/", &ann.cookie).await;
    assert_eq!(page.status(), 200, "the old cookie is still taken");
    let renewed = session_cookie(&page).expect("the cookie, signed anew");
    assert_ne!(renewed, ann.cookie);
    // A cookie of the current secret is not signed again.
    assert_eq!(session_cookie(&rotating.get_as("/", &renewed).await), None);
    rotating.stop().await;

    let app = TestApp::start(database_url, vec!["--secret".into(), new]).await;
    assert_eq!(app.get_as("/", &renewed).await.status(), 200);
    assert_eq!(app.get_as("/", &ann.cookie).await.status(), 303);
}

/// What is not a WebSocket handshake, or not one in the version spoken here, is refused
/// with a reason, before the session is read.
#[tokio::test]
async fn a_handshake_that_is_not_one_is_refused_with_a_reason() {
    use tokio_tungstenite::tungstenite::Error;
    let app = TestApp::spawn(Backend::Sqlite).await;
    let ann = app.signup("ann").await;

    let plain = app.get_as("/ws/chat/", &ann.cookie).await;
    assert_eq!(plain.status(), 400);
    assert_eq!(
        plain.text().await.unwrap(),
        "This address takes WebSocket connections only."
    );

    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/ws/chat/",
            app.addr
        ))
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("cookie", ann.cookie.parse().unwrap());
    headers.insert("origin", app.origin().parse().unwrap());
    headers.insert("sec-websocket-version", "8".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(Error::Http(response)) => {
            assert_eq!(response.status(), 426);
            assert_eq!(response.headers()["sec-websocket-version"], "13");
        }
        other => panic!("expected 426, got {:?}", other.map(|_| ())),
    }

    // The same request in version 13 opens.
    let mut client = app.open_socket(&ann, "/ws/chat/").await.unwrap();
    client.wait_for(|f| f.selector == "#logged-user").await;
}
