//! Reading server frames without a full JSON parse.
//!
//! A load generator on the same two cores as the server must not spend more per frame than
//! the server does, so frames are scanned as text. wirechat serialises
//! `{"selector":…,"html":…,"swap":…}` with serde_json, and the bare server the same fields
//! in another order (`html`, `selector`, `swap`). Either escapes every `"` inside the HTML
//! as `\"`, so an unescaped `"swap":"` can only be the field itself, and `swap` comes last
//! in both.

use std::sync::LazyLock;

use memchr::memchr2;
use memchr::memmem::{Finder, FinderRev};

/// One `<article class="message">` found in a `#messages-list` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Article<'a> {
    pub seq: i64,
    /// The message text as sent in the frame (still HTML- and JSON-escaped).
    pub body: &'a str,
}

/// The parts of a frame the load generator acts on.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `#group-name`: the room now active.
    RoomTitle {
        room_id: &'a str,
        title: &'a str,
    },
    /// `#messages-list`: history (`innerHTML`) or new messages (`beforeend`).
    Messages {
        replace: bool,
        /// The fragment, and whatever follows it in the frame: its end is not looked for,
        /// as that would scan every escaped quote in it, and the article markers
        /// `articles` looks for cannot occur outside it.
        html: &'a str,
    },
    /// `#errors`: the server refused an action.
    Error(&'a str),
    Other,
}

/// Substring searchers built once: a frame is searched several times, and setting up a
/// searcher per search cost as much as the search itself.
struct Finders {
    selector: Finder<'static>,
    html: Finder<'static>,
    swap: FinderRev<'static>,
    seq: Finder<'static>,
    body: Finder<'static>,
    body_end: Finder<'static>,
    room_id: Finder<'static>,
    title: Finder<'static>,
    span_end: Finder<'static>,
}

static FIND: LazyLock<Finders> = LazyLock::new(|| Finders {
    selector: Finder::new("\"selector\":\""),
    html: Finder::new("\"html\":\""),
    swap: FinderRev::new("\"swap\":\""),
    seq: Finder::new("data-seq=\\\""),
    body: Finder::new("<p class=\\\"body\\\""),
    body_end: Finder::new("</p>"),
    room_id: Finder::new("data-room-id=\\\""),
    title: Finder::new("\\\">"),
    span_end: Finder::new("</span>"),
});

/// The JSON string starting at `text` (just after its opening quote), up to the first
/// unescaped quote.
fn json_string(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = memchr2(b'\\', b'"', &bytes[i..]) {
        i += at;
        if bytes[i] == b'"' {
            return text.get(..i);
        }
        i += 2;
        if i >= bytes.len() {
            return None;
        }
    }
    None
}

/// The text after the first match of `pattern`.
fn after<'a>(text: &'a str, pattern: &Finder) -> Option<&'a str> {
    let at = pattern.find(text.as_bytes())?;
    text.get(at + pattern.needle().len()..)
}

/// The string value of the field whose `"key":"` the finder looks for.
fn string_field<'a>(text: &'a str, key: &Finder) -> Option<&'a str> {
    json_string(after(text, key)?)
}

/// The text between `open` and the next `close` after it.
fn between<'a>(text: &'a str, open: &Finder, close: &Finder) -> Option<&'a str> {
    let rest = after(text, open)?;
    rest.get(..close.find(rest.as_bytes())?)
}

pub fn parse(text: &str) -> Frame<'_> {
    let find = &*FIND;
    let Some(selector) = string_field(text, &find.selector) else {
        return Frame::Other;
    };
    match selector {
        "#messages-list" => {
            // The last `"swap":"`: the HTML holds no unescaped quote, so it is the field.
            let swap = find
                .swap
                .rfind(text.as_bytes())
                .and_then(|at| text.get(at + find.swap.needle().len()..))
                .and_then(json_string)
                .unwrap_or("innerHTML");
            Frame::Messages {
                replace: swap == "innerHTML",
                html: after(text, &find.html).unwrap_or(""),
            }
        }
        "#group-name" => {
            let html = string_field(text, &find.html).unwrap_or("");
            let room_id = after(html, &find.room_id)
                .and_then(|rest| rest.split_once('\\'))
                .map_or("", |(id, _)| id);
            // The title is isolated for direction: `<bdi>#hi</bdi>`.
            let title = between(html, &find.title, &find.span_end).unwrap_or("");
            Frame::RoomTitle {
                room_id,
                title: title
                    .strip_prefix("<bdi>")
                    .and_then(|t| t.strip_suffix("</bdi>"))
                    .unwrap_or(title),
            }
        }
        // A notice says what an action did; only an error is a refusal.
        "#errors" => match string_field(text, &find.html) {
            Some(html) if html.contains("class=\\\"notice\\\"") => Frame::Other,
            html => Frame::Error(html.unwrap_or("")),
        },
        _ => Frame::Other,
    }
}

/// The articles of a `#messages-list` fragment, in document order.
pub fn articles(html: &str) -> impl Iterator<Item = Article<'_>> {
    let find = &*FIND;
    let mut rest = html;
    std::iter::from_fn(move || {
        loop {
            rest = after(rest, &find.seq)?;
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let Ok(seq) = rest[..digits].parse::<i64>() else {
                continue;
            };
            // The body's tag may carry more attributes (`dir`) after its class.
            let body = after(rest, &find.body)
                .and_then(|tag| tag.split_once('>'))
                .and_then(|(_, text)| text.get(..find.body_end.find(text.as_bytes())?))
                .unwrap_or("");
            return Some(Article { seq, body });
        }
    })
}

/// Message text the load generator sends: `lt <run> <client> <n> <sent µs since epoch>`.
pub fn message_body(run: &str, client: usize, n: u64, sent_us: u64) -> String {
    format!("lt {run} {client} {n} {sent_us}")
}

/// The send time of a message this run sent, or None for anyone else's message.
pub fn sent_us(body: &str, run: &str) -> Option<u64> {
    let rest = body
        .strip_prefix("lt ")?
        .strip_prefix(run)?
        .strip_prefix(' ')?;
    rest.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(selector: &str, swap: &str, html: &str) -> String {
        serde_json::json!({"selector": selector, "html": html, "swap": swap}).to_string()
    }

    #[test]
    fn message_frames_yield_seq_and_body() {
        let html = r#"<article class="message" id="msg-1" data-seq="41" data-author="u"><header><strong class="author">ann</strong></header><p class="body" dir="auto">lt abc 3 7 1700000000000000</p></article><article class="message" id="msg-2" data-seq="42" data-author="u"><p class="body">hello &amp; "bye"</p></article>"#;
        let text = server_frame("#messages-list", "beforeend", html);
        let Frame::Messages { replace, html } = parse(&text) else {
            panic!("not a message frame: {text}");
        };
        assert!(!replace);
        let found: Vec<_> = articles(html).collect();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].seq, 41);
        assert_eq!(sent_us(found[0].body, "abc"), Some(1_700_000_000_000_000));
        assert_eq!(found[1].seq, 42);
        assert_eq!(sent_us(found[1].body, "abc"), None);
    }

    #[test]
    fn history_replaces_and_room_title_is_read() {
        let text = server_frame("#messages-list", "innerHTML", "");
        let Frame::Messages { replace, html } = parse(&text) else {
            panic!("not a message frame: {text}");
        };
        assert!(replace);
        assert_eq!(articles(html).count(), 0);
        let text = server_frame(
            "#group-name",
            "innerHTML",
            r##"<span data-room-id="0191-abc"><bdi>#lt-x-1</bdi></span>"##,
        );
        assert_eq!(
            parse(&text),
            Frame::RoomTitle {
                room_id: "0191-abc",
                title: "#lt-x-1"
            }
        );
    }

    #[test]
    fn notices_are_not_errors() {
        let notice = server_frame(
            "#errors",
            "innerHTML",
            r#"<p class="notice">You joined #x.</p>"#,
        );
        assert_eq!(parse(&notice), Frame::Other);
        let error = server_frame("#errors", "innerHTML", r#"<p class="error">No.</p>"#);
        assert!(matches!(parse(&error), Frame::Error(_)));
    }

    #[test]
    fn html_mentioning_swap_does_not_confuse_the_scan() {
        let html = r#"<p class="body">"swap":"innerHTML"</p>"#;
        let text = server_frame("#messages-list", "beforeend", html);
        assert!(matches!(
            parse(&text),
            Frame::Messages { replace: false, .. }
        ));
    }

    #[test]
    fn other_runs_messages_carry_no_timestamp() {
        let body = message_body("run1", 5, 9, 123);
        assert_eq!(sent_us(&body, "run1"), Some(123));
        assert_eq!(sent_us(&body, "run2"), None);
        assert_eq!(sent_us("lt run1", "run1"), None);
    }
}
