//! Search: the messages a person may read (their rooms and public groups) that contain
//! the words, newest first, a page at a time; edits and deletions reach the index; and a
//! search costs a bounded amount whatever the history.

use serde_json::json;

use crate::helpers::{Backend, Client, Frame, TestApp, attr};
use crate::on_both_databases;

on_both_databases!(
    a_search_finds_what_its_person_may_read,
    results_come_a_page_at_a_time_newest_first,
    edits_and_deletions_reach_the_index,
    a_bad_search_is_refused_with_the_reason,
    searches_go_through_the_action_budget,
    paging_tells_nothing_of_other_peoples_conversations,
);

/// Searches and returns the results and the "More" frame.
async fn search(client: &mut Client, query: &str, before: Option<&str>) -> (Frame, Frame) {
    let data = match before {
        Some(before) => json!({ "query": query, "before": before }),
        None => json!({ "query": query }),
    };
    client.act("Search", data).await;
    let results = client
        .wait_for(|f| f.selector == "#search-results" || f.selector == "#errors")
        .await;
    assert_eq!(results.selector, "#search-results", "{}", results.html);
    let more = client.wait_for(|f| f.selector == "#search-more").await;
    (results, more)
}

/// Where the "More" button's search starts, if there is one.
fn next_page(more: &Frame) -> Option<String> {
    let payload = attr(&more.html, "data-payload")?.replace("&quot;", "\"");
    let payload: serde_json::Value = serde_json::from_str(&payload).ok()?;
    payload["before"].as_str().map(str::to_owned)
}

/// The found messages' texts, as the results show them (the match marked).
fn snippets(html: &str) -> Vec<String> {
    html.split("<span class=\"snippet\" dir=\"auto\">")
        .skip(1)
        .map(|s| {
            s[..s.find("</span>").unwrap_or(s.len())]
                .replace("<mark>", "")
                .replace("</mark>", "")
        })
        .collect()
}

async fn a_search_finds_what_its_person_may_read(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let [ann, bob, eve] = app.signups(["ann", "bob", "eve"]).await;
    let mut a = app.connect(&ann).await;
    let mut e = app.connect(&eve).await;
    a.post("The quarterly Report is due").await;
    a.enter_direct("bob").await;
    a.post("a private report for bob").await;
    e.enter_group("reports").await;
    e.post("eve's public report").await;
    a.enter_group("hi").await;
    a.post("我们明天开会讨论").await;
    drop(bob);

    // Ann reads the group she is in, her conversation, and a public group she never
    // joined; any case, inside words.
    let (results, more) = search(&mut a, "REPORT", None).await;
    assert_eq!(
        snippets(&results.html),
        [
            "eve's public report",
            "a private report for bob",
            "The quarterly Report is due"
        ]
    );
    assert!(
        results.html.contains("<mark>Report</mark>"),
        "{}",
        results.html
    );
    assert!(!more.html.contains("More"));
    // Each leads to its message in its room.
    assert!(
        results.html.contains("href=\"/r/reports#msg-"),
        "{}",
        results.html
    );
    assert!(
        results.html.contains("href=\"/dm/bob#msg-"),
        "{}",
        results.html
    );
    let (results, _) = search(&mut a, "port", None).await;
    assert_eq!(snippets(&results.html).len(), 3);
    // Words of a language written without spaces.
    let (results, _) = search(&mut a, "明天开会", None).await;
    assert_eq!(snippets(&results.html), ["我们明天开会讨论"]);
    // Eve is not in Ann's conversation with Bob.
    let (results, _) = search(&mut e, "report", None).await;
    assert_eq!(
        snippets(&results.html),
        ["eve's public report", "The quarterly Report is due"]
    );
    let (results, _) = search(&mut e, "private", None).await;
    assert!(snippets(&results.html).is_empty());
    assert!(
        results
            .html
            .contains("No messages you can read contain that.")
    );
    // A conversation closed by a block is found no more, as it opens no more.
    a.act("Block user", json!({ "username": "bob" })).await;
    a.wait_for_notice("You blocked bob").await;
    let (results, _) = search(&mut a, "private", None).await;
    assert!(snippets(&results.html).is_empty(), "{}", results.html);
}

async fn results_come_a_page_at_a_time_newest_first(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--rate-burst", "100"]).await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    for n in 1..=45 {
        a.say(&format!("needle {n:02}")).await;
    }
    a.wait_for_message("needle 45").await;
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    for expected in [20, 20, 5] {
        let (results, more) = search(&mut a, "needle", before.as_deref()).await;
        let page = snippets(&results.html);
        assert_eq!(page.len(), expected, "{page:?}");
        assert_eq!(
            results.swap,
            if before.is_some() {
                "beforeend"
            } else {
                "innerHTML"
            }
        );
        seen.extend(page);
        before = next_page(&more);
    }
    assert_eq!(before, None, "no More after the last page");
    let newest_first: Vec<String> = (1..=45).rev().map(|n| format!("needle {n:02}")).collect();
    assert_eq!(seen, newest_first);
}

async fn edits_and_deletions_reach_the_index(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    let edited = a.post("meet at the old bridge").await;
    let deleted = a.post("my password is hunter2").await;
    a.act(
        "Edit message",
        json!({ "messageId": edited, "message": "meet at the new tower" }),
    )
    .await;
    a.wait_for_change(&edited).await;
    a.act("Delete message", json!({ "messageId": deleted }))
        .await;
    a.wait_for_change(&deleted).await;
    for gone in ["old bridge", "hunter2", "password"] {
        let (results, _) = search(&mut a, gone, None).await;
        assert!(
            snippets(&results.html).is_empty(),
            "{gone}: {}",
            results.html
        );
    }
    let (results, _) = search(&mut a, "new tower", None).await;
    assert_eq!(snippets(&results.html), ["meet at the new tower"]);
}

async fn a_bad_search_is_refused_with_the_reason(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--action-budget-burst", "1000"]).await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    for (query, before, says) in [
        ("ab", None, "at least 3"),
        ("  a  ", None, "at least 3"),
        (&"x".repeat(101)[..], None, "at most 100"),
        ("!!!", None, "at least one letter or digit"),
        ("hello", Some("not-a-cursor"), "not where a search left off"),
        ("hello", Some("-5"), "not where a search left off"),
        (
            "hello",
            Some(&"9".repeat(100)[..]),
            "not where a search left off",
        ),
    ] {
        let data = match before {
            Some(before) => json!({ "query": query, "before": before }),
            None => json!({ "query": query }),
        };
        a.act("Search", data).await;
        let refused = a.wait_for_error().await;
        assert!(refused.contains(says), "{query:?}: {refused}");
    }
    // Quotes and wildcards are text to find, not syntax.
    for odd in ["\"a\"\"", "100%", "a_b", "x\\y*", "NEAR(a b)", "a OR b"] {
        let (results, _) = search(&mut a, odd, None).await;
        assert!(snippets(&results.html).is_empty(), "{odd}");
    }
    a.post("a 100% sure thing").await;
    let (results, _) = search(&mut a, "100%", None).await;
    assert_eq!(snippets(&results.html), ["a 100% sure thing"]);
}

/// A search costs five units of the action budget: a burst of them is refused, and says so.
async fn searches_go_through_the_action_budget(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    for _ in 0..20 {
        a.act("Search", json!({ "query": "anything" })).await;
    }
    let refused = a
        .wait_for(|f| f.selector == "#errors" && f.html.contains("too fast"))
        .await;
    assert!(refused.html.contains("too fast"));
}

/// On SQLite a search matches at most 200 candidates (messages holding every trigram of
/// the query) against the text: past them it offers the next page, and goes on below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_matches_a_bounded_number_of_candidates() {
    let app = TestApp::spawn_with(Backend::Sqlite, &["--rate-burst", "5000"]).await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    a.post("the real abcabd is here").await;
    // Every trigram of "abcabd" (abc, bca, cab, abd), never in a row.
    for n in 0..250 {
        a.say(&format!("abd cab bca abc {n}")).await;
    }
    a.wait_for_message("abc 249").await;
    let (results, more) = search(&mut a, "abcabd", None).await;
    assert!(snippets(&results.html).is_empty(), "{}", results.html);
    assert!(
        results.html.contains("look further back"),
        "{}",
        results.html
    );
    let before = next_page(&more).expect("a next page past the candidates matched");
    let (results, more) = search(&mut a, "abcabd", Some(&before)).await;
    assert_eq!(snippets(&results.html), ["the real abcabd is here"]);
    assert_eq!(next_page(&more), None);
}

/// Paging tells nothing of what a person may not read: a word said only in other people's
/// conversations answers as a word said nowhere.
async fn paging_tells_nothing_of_other_peoples_conversations(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--rate-burst", "5000"]).await;
    let [ann, bob, eve] = app.signups(["ann", "bob", "eve"]).await;
    let mut b = app.connect(&bob).await;
    b.enter_direct("eve").await;
    for n in 0..300 {
        b.say(&format!("vault code {n}")).await;
    }
    b.wait_for_message("vault code 299").await;
    drop(eve);
    let mut a = app.connect(&ann).await;
    let (said, said_more) = search(&mut a, "vault code", None).await;
    let (unsaid, unsaid_more) = search(&mut a, "never said", None).await;
    assert_eq!(said.html, unsaid.html);
    assert_eq!(said_more.html, unsaid_more.html);
    assert_eq!(next_page(&said_more), None);
}

/// On PostgreSQL the version before offered More below a message id: a page shown before
/// an upgrade still goes on below that message after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_from_a_page_of_the_version_before_goes_on_below_its_message() {
    let app = TestApp::spawn_with(Backend::Postgres, &["--rate-burst", "100"]).await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    let mut ids = Vec::new();
    for n in 1..=5 {
        ids.push(a.post(&format!("needle {n}")).await);
    }
    let (results, more) = search(&mut a, "needle", Some(&ids[3])).await;
    assert_eq!(
        snippets(&results.html),
        ["needle 3", "needle 2", "needle 1"]
    );
    assert_eq!(next_page(&more), None);
}
