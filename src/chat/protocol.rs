//! The WebSocket protocol: client actions in, HTML fragments out.
//!
//! Client frames are `{"action": "...", "data": {...}}`; the action names are the tutorial's
//! ("Change group", "New message") plus wirechat's own. Server frames are
//! `{"selector": "#id", "html": "...", "swap": "..."}`, telling the page where to put a
//! fragment the server rendered.

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};

use super::names::InputError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Enter a group (`is_group`) or the direct room with a user. `is_group` is only a hint
    /// about which kind of name this is; the server decides who may enter what.
    ChangeGroup {
        name: String,
        is_group: bool,
    },
    /// Post to the active room, or to `room_id` (another room of the user's). `client_id`
    /// (a UUID the client chose) makes posting the same message again harmless.
    NewMessage {
        text: String,
        client_id: Option<String>,
        room_id: Option<String>,
        /// The message it replies to, in the same room.
        reply_to: Option<String>,
    },
    /// Give a message of one's own new text.
    EditMessage {
        message_id: String,
        text: String,
    },
    /// Delete a message of one's own: its text is erased.
    DeleteMessage {
        message_id: String,
    },
    /// Add one's reaction to a message, or take it back.
    React {
        message_id: String,
        emoji: String,
    },
    /// One page of history before `before_seq` in the active room.
    LoadOlder {
        before_seq: i64,
    },
    /// Everything in the active room after `after_seq` (gap repair, reconnect).
    CatchUp {
        after_seq: i64,
    },
    /// Create a public group and enter it.
    CreateGroup {
        name: String,
    },
    /// The user is typing in the active room.
    Typing,
    /// One page of the public groups whose names start with `query`, after `after`.
    BrowseGroups {
        query: String,
        after: String,
    },
    /// Leave a group: it leaves the sidebar, and its messages stop coming.
    LeaveGroup {
        name: String,
    },
    /// Take the conversation with a user out of the sidebar until someone writes in it.
    HideConversation {
        username: String,
    },
    /// Refuse conversations with a user, both ways, until unblocked.
    BlockUser {
        username: String,
    },
    UnblockUser {
        username: String,
    },
    /// The people the user blocked, into the sidebar.
    BlockedPeople,
    /// A page of the messages the user may read that contain `query`, newest first, before
    /// `before` (where the page before left off).
    Search {
        query: String,
        before: Option<String>,
    },
}

#[derive(Deserialize)]
struct Envelope {
    action: String,
    #[serde(default)]
    data: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeGroupData {
    #[serde(rename = "groupName")]
    group_name: String,
    #[serde(rename = "isGroup", default = "default_true")]
    is_group: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
struct NewMessageData {
    message: String,
    #[serde(rename = "clientId", default)]
    client_id: Option<String>,
    #[serde(rename = "roomId", default)]
    room_id: Option<String>,
    #[serde(rename = "replyTo", default)]
    reply_to: Option<String>,
}

#[derive(Deserialize)]
struct EditMessageData {
    #[serde(rename = "messageId")]
    message_id: String,
    message: String,
}

#[derive(Deserialize)]
struct ReactData {
    #[serde(rename = "messageId")]
    message_id: String,
    emoji: String,
}

#[derive(Deserialize)]
struct MessageIdData {
    #[serde(rename = "messageId")]
    message_id: String,
}

/// A UUID as the store keeps them (lowercase and hyphenated), from field `field`.
fn uuid(field: &str, id: &str) -> Result<String, InputError> {
    uuid::Uuid::parse_str(id)
        .map(|id| id.to_string())
        .map_err(|_| InputError(format!("\"{field}\" must be a UUID.")))
}

fn message_id(id: &str) -> Result<String, InputError> {
    uuid("messageId", id)
}

#[derive(Deserialize)]
struct LoadOlderData {
    #[serde(rename = "beforeSeq")]
    before_seq: i64,
}

#[derive(Deserialize)]
struct CatchUpData {
    #[serde(rename = "afterSeq")]
    after_seq: i64,
}

#[derive(Deserialize)]
struct CreateGroupData {
    #[serde(rename = "groupName")]
    group_name: String,
}

#[derive(Deserialize)]
struct BrowseGroupsData {
    #[serde(default)]
    query: String,
    #[serde(default)]
    after: String,
}

#[derive(Deserialize)]
struct SearchData {
    query: String,
    #[serde(default)]
    before: Option<String>,
}

#[derive(Deserialize)]
struct UserData {
    username: String,
}

fn data<T: serde::de::DeserializeOwned>(
    action: &str,
    value: serde_json::Value,
) -> Result<T, InputError> {
    serde_json::from_value(value).map_err(|e| {
        // serde quotes the offending value: a long one would make the answer longer than
        // the question.
        let reason: String = e.to_string().chars().take(160).collect();
        InputError(format!("Invalid data for \"{action}\": {reason}."))
    })
}

impl Action {
    pub fn parse(text: &str) -> Result<Action, InputError> {
        let envelope: Envelope = serde_json::from_str(text).map_err(|_| {
            InputError(
                "Frames must be JSON like {\"action\": \"New message\", \"data\": {\"message\": \"hi\"}}."
                    .into(),
            )
        })?;
        let action = envelope.action.as_str();
        Ok(match action {
            "Change group" => {
                let d: ChangeGroupData = data(action, envelope.data)?;
                Action::ChangeGroup {
                    name: d.group_name,
                    is_group: d.is_group,
                }
            }
            "New message" => {
                let d: NewMessageData = data(action, envelope.data)?;
                let client_id = d.client_id.map(|id| uuid("clientId", &id)).transpose()?;
                if d.room_id.as_ref().is_some_and(|id| id.len() > 64) {
                    return Err(InputError("\"roomId\" names no room.".into()));
                }
                Action::NewMessage {
                    text: d.message,
                    client_id,
                    room_id: d.room_id,
                    reply_to: d.reply_to.map(|id| uuid("replyTo", &id)).transpose()?,
                }
            }
            "Edit message" => {
                let d: EditMessageData = data(action, envelope.data)?;
                Action::EditMessage {
                    message_id: message_id(&d.message_id)?,
                    text: d.message,
                }
            }
            "Delete message" => Action::DeleteMessage {
                message_id: message_id(&data::<MessageIdData>(action, envelope.data)?.message_id)?,
            },
            "React" => {
                let d: ReactData = data(action, envelope.data)?;
                Action::React {
                    message_id: message_id(&d.message_id)?,
                    emoji: d.emoji,
                }
            }
            "Load older" => Action::LoadOlder {
                before_seq: data::<LoadOlderData>(action, envelope.data)?.before_seq,
            },
            "Catch up" => Action::CatchUp {
                after_seq: data::<CatchUpData>(action, envelope.data)?.after_seq,
            },
            "Create group" => Action::CreateGroup {
                name: data::<CreateGroupData>(action, envelope.data)?.group_name,
            },
            "Typing" => Action::Typing,
            "Browse groups" => {
                let d: BrowseGroupsData = data(action, envelope.data)?;
                Action::BrowseGroups {
                    query: d.query,
                    after: d.after,
                }
            }
            "Leave group" => Action::LeaveGroup {
                name: data::<CreateGroupData>(action, envelope.data)?.group_name,
            },
            "Hide conversation" => Action::HideConversation {
                username: data::<UserData>(action, envelope.data)?.username,
            },
            "Block user" => Action::BlockUser {
                username: data::<UserData>(action, envelope.data)?.username,
            },
            "Unblock user" => Action::UnblockUser {
                username: data::<UserData>(action, envelope.data)?.username,
            },
            "Blocked people" => Action::BlockedPeople,
            "Search" => {
                let d: SearchData = data(action, envelope.data)?;
                if d.before.as_ref().is_some_and(|b| b.len() > 64) {
                    return Err(InputError(
                        "\"before\" is not where a search left off.".into(),
                    ));
                }
                Action::Search {
                    query: d.query,
                    before: d.before,
                }
            }
            _ => {
                let shown: String = action.chars().take(40).collect();
                return Err(InputError(format!("Unknown action \"{shown}\".")));
            }
        })
    }
}

/// Where a fragment goes relative to the element the selector names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Swap {
    #[serde(rename = "innerHTML")]
    Inner,
    #[serde(rename = "beforeend")]
    BeforeEnd,
    #[serde(rename = "afterbegin")]
    AfterBegin,
    #[serde(rename = "outerHTML")]
    Outer,
    #[serde(rename = "remove")]
    Remove,
}

#[derive(Serialize)]
struct FrameJson<'a> {
    selector: &'a str,
    html: &'a str,
    swap: Swap,
}

/// Serialises one server frame. The result is shared, not copied, by every recipient.
pub fn frame(selector: &str, swap: Swap, html: &str) -> Utf8Bytes {
    let json = serde_json::to_string(&FrameJson {
        selector,
        html,
        swap,
    })
    .unwrap_or_default();
    Utf8Bytes::from(json)
}

/// `text` escaped for the inside of a JSON string: a fragment that many frames carry is
/// escaped once and spliced in with `frame_around`.
pub fn json_escaped(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_owned()
}

/// The frame `frame(selector, swap, before + middle + after)` would make, where `middle`
/// comes already escaped by `json_escaped`.
pub fn frame_around(
    selector: &str,
    swap: Swap,
    before: &str,
    escaped_middle: &str,
    after: &str,
) -> Utf8Bytes {
    let (selector, swap) = (
        serde_json::to_string(selector).unwrap_or_default(),
        serde_json::to_string(&swap).unwrap_or_default(),
    );
    let (before, after) = (json_escaped(before), json_escaped(after));
    let mut json = String::with_capacity(
        selector.len() + before.len() + escaped_middle.len() + after.len() + swap.len() + 32,
    );
    for part in [
        "{\"selector\":",
        &selector,
        ",\"html\":\"",
        &before,
        escaped_middle,
        &after,
        "\",\"swap\":",
        &swap,
        "}",
    ] {
        json.push_str(part);
    }
    Utf8Bytes::from(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spliced_frame_is_the_frame_of_the_whole() {
        let (before, middle, after) = ("<ul id=\"a\">\n", "<li>\"é\" \\ \u{1}</li>", "</ul>");
        assert_eq!(
            frame_around("#aside", Swap::Inner, before, &json_escaped(middle), after),
            frame("#aside", Swap::Inner, &format!("{before}{middle}{after}"))
        );
    }

    #[test]
    fn tutorial_actions_parse() {
        assert_eq!(
            Action::parse(
                r#"{"action":"Change group","data":{"groupName":"python","isGroup":true}}"#
            ),
            Ok(Action::ChangeGroup {
                name: "python".into(),
                is_group: true
            })
        );
        assert_eq!(
            Action::parse(r#"{"action":"New message","data":{"message":"hi"}}"#),
            Ok(Action::NewMessage {
                text: "hi".into(),
                client_id: None,
                room_id: None,
                reply_to: None
            })
        );
        assert_eq!(
            Action::parse(
                r#"{"action":"New message","data":{"message":"hi","clientId":"0191B2C3-0000-7000-8000-000000000001"}}"#
            ),
            Ok(Action::NewMessage {
                text: "hi".into(),
                client_id: Some("0191b2c3-0000-7000-8000-000000000001".into()),
                room_id: None,
                reply_to: None
            })
        );
    }

    #[test]
    fn bad_frames_say_why() {
        for (input, says) in [
            ("not json", "JSON"),
            (r#"{"action":"Dance"}"#, "Unknown action"),
            (r#"{"action":"New message","data":{}}"#, "missing field"),
            (
                r#"{"action":"New message","data":{"message":5}}"#,
                "invalid type",
            ),
            (
                r#"{"action":"New message","data":{"message":"hi","clientId":"nope"}}"#,
                "must be a UUID",
            ),
            (
                r#"{"action":"Load older","data":{"beforeSeq":1e400}}"#,
                "JSON",
            ),
            ("[]", "JSON"),
        ] {
            let err = Action::parse(input).unwrap_err();
            assert!(err.0.contains(says), "{input}: {err}");
        }
        let deep = "[".repeat(10_000);
        assert!(Action::parse(&deep).is_err());
        let long = format!(
            r#"{{"action":"Load older","data":{{"beforeSeq":"{}"}}}}"#,
            "x".repeat(40_000)
        );
        assert!(Action::parse(&long).unwrap_err().0.len() < 300);
    }

    #[test]
    fn frames_are_json() {
        let f = frame("#x", Swap::BeforeEnd, "<b>\"</b>");
        let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
        assert_eq!(v["swap"], "beforeend");
        assert_eq!(v["html"], "<b>\"</b>");
    }

    mod properties {
        use super::super::*;
        use crate::chat::names::{GroupName, MessageText};
        use proptest::prelude::*;

        /// Arbitrary JSON, nested a few levels, with awkward strings and numbers.
        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                ".*".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                    prop::collection::hash_map(".*", inner, 0..6)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn action_name() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("Change group".to_string()),
                Just("New message".to_string()),
                Just("Edit message".to_string()),
                Just("Delete message".to_string()),
                Just("React".to_string()),
                Just("Load older".to_string()),
                Just("Catch up".to_string()),
                Just("Create group".to_string()),
                Just("Typing".to_string()),
                Just("Browse groups".to_string()),
                Just("Leave group".to_string()),
                Just("Hide conversation".to_string()),
                Just("Block user".to_string()),
                Just("Unblock user".to_string()),
                Just("Blocked people".to_string()),
                Just("Search".to_string()),
                ".*",
            ]
        }

        proptest! {
            #[test]
            fn any_text_parses_or_is_refused_without_panicking(text in ".*") {
                let _ = Action::parse(&text);
            }

            #[test]
            fn any_envelope_parses_or_is_refused_with_a_reason(action in action_name(), data in json_value()) {
                let frame = serde_json::json!({ "action": action, "data": data }).to_string();
                if let Err(e) = Action::parse(&frame) {
                    prop_assert!(!e.0.is_empty());
                }
            }

            #[test]
            fn message_text_round_trips(text in ".*") {
                let frame = serde_json::json!({ "action": "New message", "data": { "message": text } }).to_string();
                prop_assert_eq!(Action::parse(&frame), Ok(Action::NewMessage { text: text.clone(), client_id: None, room_id: None, reply_to: None }));
                if let Ok(valid) = MessageText::parse(&text, 4000) {
                    prop_assert!(!valid.as_str().is_empty());
                    prop_assert!(!valid.as_str().chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
                }
            }

            #[test]
            fn accepted_group_names_are_safe_in_html_and_ids(raw in ".*") {
                if let Ok(name) = GroupName::parse(&raw) {
                    prop_assert!(name.as_str().chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
                }
            }
        }
    }
}
