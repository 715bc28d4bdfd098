//! Reading server frames without a full JSON parse.
//!
//! A load generator on the same two cores as the server must not spend more per frame than
//! the server does, so frames are scanned as text. The server serialises
//! `{"selector":…,"html":…,"swap":…}` with serde_json, which escapes every `"` inside the
//! HTML as `\"`; an unescaped `"swap":"` can therefore only be the field itself.

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
        html: &'a str,
    },
    /// `#errors`: the server refused an action.
    Error(&'a str),
    Other,
}

/// The string value of `"key":"…"`, searched from `from`, unescaped quotes ending it.
fn string_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("\"{key}\":\"");
    let start = text.find(&pattern)? + pattern.len();
    let rest = &text[start..];
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(&rest[..i]),
            _ => i += 1,
        }
    }
    None
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

pub fn parse(text: &str) -> Frame<'_> {
    let Some(selector) = string_field(text, "selector") else {
        return Frame::Other;
    };
    match selector {
        "#messages-list" => {
            let swap = text
                .rfind("\"swap\":\"")
                .map(|at| &text[at..])
                .and_then(|tail| string_field(tail, "swap"))
                .unwrap_or("innerHTML");
            Frame::Messages {
                replace: swap == "innerHTML",
                html: string_field(text, "html").unwrap_or(""),
            }
        }
        "#group-name" => {
            let html = string_field(text, "html").unwrap_or("");
            Frame::RoomTitle {
                room_id: between(html, "data-room-id=\\\"", "\\\"").unwrap_or(""),
                title: between(html, "\\\">", "</span>").unwrap_or(""),
            }
        }
        "#errors" => Frame::Error(string_field(text, "html").unwrap_or("")),
        _ => Frame::Other,
    }
}

/// The articles of a `#messages-list` fragment, in document order.
pub fn articles(html: &str) -> impl Iterator<Item = Article<'_>> {
    const SEQ: &str = "data-seq=\\\"";
    const BODY: &str = "<p class=\\\"body\\\">";
    let mut rest = html;
    std::iter::from_fn(move || {
        loop {
            let at = rest.find(SEQ)?;
            rest = &rest[at + SEQ.len()..];
            let end = rest.find('\\')?;
            let Ok(seq) = rest[..end].parse::<i64>() else {
                continue;
            };
            let body = between(rest, BODY, "</p>").unwrap_or("");
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
        let html = r#"<article class="message" id="msg-1" data-seq="41" data-author="u"><header><strong class="author">ann</strong></header><p class="body">lt abc 3 7 1700000000000000</p></article><article class="message" id="msg-2" data-seq="42" data-author="u"><p class="body">hello &amp; "bye"</p></article>"#;
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
        assert_eq!(
            parse(&text),
            Frame::Messages {
                replace: true,
                html: ""
            }
        );
        let text = server_frame(
            "#group-name",
            "innerHTML",
            r##"<span data-room-id="0191-abc">#lt-x-1</span>"##,
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
