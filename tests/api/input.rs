//! Bad input over the socket: every kind gets an error fragment, the socket stays open, and
//! nothing is stored or changed.

use crate::helpers::{Backend, Received, TestApp, seqs};
use crate::on_both_databases;

on_both_databases!(
    bad_frames_get_errors_and_change_nothing,
    rate_limit_refuses_bursts,
    oversize_frames_are_refused
);

async fn bad_frames_get_errors_and_change_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    let hi = a.room_id.clone();
    let long = format!(
        r#"{{"action":"New message","data":{{"message":"{}"}}}}"#,
        "y".repeat(4001)
    );
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(&str, &str)> = vec![
        ("not json at all", "JSON"),
        (r#"{"action":"Dance","data":{}}"#, "Unknown action"),
        (r#"{"data":{"message":"hi"}}"#, "JSON"),
        (r#"{"action":"New message"}"#, "Invalid data"),
        (r#"{"action":"New message","data":{}}"#, "missing field"),
        (
            r#"{"action":"New message","data":{"message":42}}"#,
            "invalid type",
        ),
        (r#"{"action":"New message","data":{"message":""}}"#, "Empty"),
        (
            r#"{"action":"New message","data":{"message":"  \n\t "}}"#,
            "Empty",
        ),
        (&long, "at most 4000"),
        (
            r#"{"action":"New message","data":{"message":"nul\u0000byte"}}"#,
            "control",
        ),
        (
            r#"{"action":"Change group","data":{"groupName":"no spaces","isGroup":true}}"#,
            "Group names",
        ),
        (
            r#"{"action":"Change group","data":{"groupName":"<script>","isGroup":true}}"#,
            "Group names",
        ),
        (
            r#"{"action":"Change group","data":{"groupName":"nobody-here","isGroup":false}}"#,
            "no user",
        ),
        (
            r#"{"action":"Change group","data":{"groupName":"ann","isGroup":false}}"#,
            "That is you",
        ),
        (
            r#"{"action":"Load older","data":{"beforeSeq":1e999}}"#,
            "JSON",
        ),
        (&deep, "JSON"),
    ];
    for (input, says) in cases {
        a.send_raw(input).await;
        let error = a.wait_for_error().await;
        assert!(
            error.to_lowercase().contains(&says.to_lowercase()),
            "{input:.80}: {error}"
        );
        assert!(error.contains(r#"role="alert""#), "{error}");
    }
    // Binary frames are refused the same way.
    {
        use futures_util::SinkExt;
        a.stream()
            .send(tokio_tungstenite::tungstenite::Message::binary(vec![
                1, 2, 3,
            ]))
            .await
            .unwrap();
        assert!(a.wait_for_error().await.contains("text"));
    }
    // The socket is still open, still in #hi, and nothing was stored: the next message is
    // the room's first.
    a.say("still here").await;
    let frame = a.wait_for_message("still here").await;
    assert_eq!(seqs(&frame.html), vec![1]);
    let mut again = app.connect(&ann).await;
    assert_eq!(again.room_id, hi);
    let list = again.wait_for(|f| f.selector == "#messages-list").await;
    assert_eq!(seqs(&list.html), vec![1]);
    let page = app.page(&ann.cookie).await;
    assert!(!page.contains("no spaces") && !page.contains("nobody-here"));
}

async fn rate_limit_refuses_bursts(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &["--rate-burst", "3", "--rate-per-second", "0.001"],
    )
    .await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    for i in 1..=4 {
        a.say(&format!("burst {i}")).await;
    }
    // The fourth is refused at once, while the first three may still be being stored:
    // wait for both the refusal and the third's article, in whichever order they come.
    let (mut refusal, mut third) = (None, false);
    while refusal.is_none() || !third {
        let f = a.next_frame().await;
        if f.selector == "#errors" && f.html.contains("class=\"error\"") {
            refusal = Some(f.html);
        } else if f.selector == "#messages-list" && f.html.contains("burst 3") {
            third = true;
        }
    }
    let error = refusal.unwrap_or_default();
    assert!(error.contains("too fast"), "{error}");
    // Exactly three went through.
    let mut again = app.connect(&ann).await;
    let list = again.wait_for(|f| f.selector == "#messages-list").await;
    assert_eq!(seqs(&list.html), vec![1, 2, 3]);
}

async fn oversize_frames_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    let huge = format!(
        r#"{{"action":"New message","data":{{"message":"{}"}}}}"#,
        "z".repeat(200_000)
    );
    a.send_raw(&huge).await;
    // The WebSocket layer refuses it and ends that socket...
    loop {
        if let Received::Closed(_) = a.receive().await {
            break;
        }
    }
    // ...and the server carries on.
    let mut b = app.connect(&ann).await;
    b.say("fine").await;
    let frame = b.wait_for_message("fine").await;
    assert_eq!(seqs(&frame.html), vec![1]);
}
