//! Events as they travel between nodes.
//!
//! A payload is one ASCII header line followed by the frame's bytes, untouched:
//!
//! ```text
//! wc1 M <origin> <room> <seq>\n<frame>     a stored message
//! wc1 C <origin> <room> <seq>\n<frame>     a message edited or deleted
//! wc1 V <origin> <room>\n<frame>           for the room's viewers
//! wc1 A <origin>\n<frame>                  for everyone in the group
//! wc1 N <origin> <room>\n<frame>           a room was added for the user
//! wc1 R <origin> <room>\n                  a room was removed for the user
//! wc1 H <origin> <room>\n<frame>           a room was hidden by the user
//! wc1 L <origin> <session digest>\n        a session was ended
//! ```
//!
//! The frame is already JSON, so it is not escaped or re-encoded: the node that rendered it
//! sends its bytes, and receivers check them for UTF-8 once and forward them. `origin`
//! names the process that published, so it can skip its own events (it delivered them
//! locally already).

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;

use super::Event;

const VERSION: &str = "wc1";

/// The payload for `event`, or `None` for events that never leave a node.
pub fn encode(origin: &str, event: &Event) -> Option<Vec<u8>> {
    let (header, frame) = match event {
        Event::Message { room, seq, frame } => {
            (format!("{VERSION} M {origin} {room} {seq}\n"), frame)
        }
        Event::Changed { room, seq, frame } => {
            (format!("{VERSION} C {origin} {room} {seq}\n"), frame)
        }
        Event::Viewers { room, frame } => (format!("{VERSION} V {origin} {room}\n"), frame),
        Event::All { frame } => (format!("{VERSION} A {origin}\n"), frame),
        Event::RoomAdded { room, frame } => (format!("{VERSION} N {origin} {room}\n"), frame),
        Event::RoomHidden { room, frame } => (format!("{VERSION} H {origin} {room}\n"), frame),
        Event::RoomRemoved { room } => {
            return Some(format!("{VERSION} R {origin} {room}\n").into_bytes());
        }
        Event::SessionEnded { session } => {
            return Some(format!("{VERSION} L {origin} {session}\n").into_bytes());
        }
        Event::Resync => return Some(format!("{VERSION} S {origin}\n").into_bytes()),
    };
    let mut payload = Vec::with_capacity(header.len() + frame.len());
    payload.extend_from_slice(header.as_bytes());
    payload.extend_from_slice(frame.as_str().as_bytes());
    Some(payload)
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed event payload: {0}")]
pub struct DecodeError(&'static str);

/// A payload received from another node: who sent it, and the event.
#[derive(Debug)]
pub struct Received {
    pub origin: String,
    pub event: Event,
}

pub fn decode(payload: Bytes) -> Result<Received, DecodeError> {
    let newline = payload
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(DecodeError("no header line"))?;
    let header =
        std::str::from_utf8(&payload[..newline]).map_err(|_| DecodeError("header not UTF-8"))?;
    // The only UTF-8 check the frame gets on its way to every socket on this node.
    let frame = Utf8Bytes::try_from(payload.slice(newline + 1..))
        .map_err(|_| DecodeError("frame not UTF-8"))?;
    let mut fields = header.split(' ');
    if fields.next() != Some(VERSION) {
        return Err(DecodeError("unknown version"));
    }
    let kind = fields.next().ok_or(DecodeError("no kind"))?;
    let origin = field(fields.next())?.to_owned();
    let event = match kind {
        "M" | "C" => {
            let room = room(fields.next())?;
            let seq = field(fields.next())?
                .parse()
                .map_err(|_| DecodeError("bad seq"))?;
            if kind == "M" {
                Event::Message { room, seq, frame }
            } else {
                Event::Changed { room, seq, frame }
            }
        }
        "V" => Event::Viewers {
            room: room(fields.next())?,
            frame,
        },
        "A" => Event::All { frame },
        "N" => Event::RoomAdded {
            room: room(fields.next())?,
            frame,
        },
        "H" => Event::RoomHidden {
            room: room(fields.next())?,
            frame,
        },
        "R" => Event::RoomRemoved {
            room: room(fields.next())?,
        },
        "L" => Event::SessionEnded {
            session: room(fields.next())?,
        },
        "S" => Event::Resync,
        _ => return Err(DecodeError("unknown kind")),
    };
    if fields.next().is_some() {
        return Err(DecodeError("trailing header fields"));
    }
    Ok(Received { origin, event })
}

fn field(value: Option<&str>) -> Result<&str, DecodeError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or(DecodeError("missing field"))
}

fn room(value: Option<&str>) -> Result<Arc<str>, DecodeError> {
    field(value).map(Arc::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(event: Event) -> Event {
        let payload = encode("n1", &event).expect("sent between nodes");
        let received = decode(Bytes::from(payload)).expect("decodes");
        assert_eq!(received.origin, "n1");
        received.event
    }

    #[test]
    fn every_kind_round_trips_with_its_frame_untouched() {
        // Multi-byte text, quotes, backslashes and newlines inside the frame.
        let text =
            r##"{"selector":"#messages-list","html":"<p>héllo \"✓\"\n</p>","swap":"beforeend"}"##;
        let f = Utf8Bytes::from(text);
        match round_trip(Event::Message {
            room: Arc::from("r-1"),
            seq: 42,
            frame: f.clone(),
        }) {
            Event::Message { room, seq, frame } => {
                assert_eq!((&*room, seq, frame.as_str()), ("r-1", 42, text));
            }
            other => panic!("got {other:?}"),
        }
        match round_trip(Event::Changed {
            room: Arc::from("r-1"),
            seq: 43,
            frame: f.clone(),
        }) {
            Event::Changed { room, seq, frame } => {
                assert_eq!((&*room, seq, frame.as_str()), ("r-1", 43, text));
            }
            other => panic!("got {other:?}"),
        }
        match round_trip(Event::Viewers {
            room: Arc::from("r-2"),
            frame: f.clone(),
        }) {
            Event::Viewers { room, frame } => assert_eq!((&*room, frame.as_str()), ("r-2", text)),
            other => panic!("got {other:?}"),
        }
        match round_trip(Event::All { frame: f.clone() }) {
            Event::All { frame } => assert_eq!(frame.as_str(), text),
            other => panic!("got {other:?}"),
        }
        match round_trip(Event::RoomAdded {
            room: Arc::from("r-3"),
            frame: f.clone(),
        }) {
            Event::RoomAdded { room, frame } => {
                assert_eq!((&*room, frame.as_str()), ("r-3", text));
            }
            other => panic!("got {other:?}"),
        }
        match round_trip(Event::RoomHidden {
            room: Arc::from("r-4"),
            frame: f.clone(),
        }) {
            Event::RoomHidden { room, frame } => {
                assert_eq!((&*room, frame.as_str()), ("r-4", text));
            }
            other => panic!("got {other:?}"),
        }
        match round_trip(Event::RoomRemoved {
            room: Arc::from("r-5"),
        }) {
            Event::RoomRemoved { room } => assert_eq!(&*room, "r-5"),
            other => panic!("got {other:?}"),
        }
        match round_trip(Event::SessionEnded {
            session: Arc::from("d1g3st"),
        }) {
            Event::SessionEnded { session } => assert_eq!(&*session, "d1g3st"),
            other => panic!("got {other:?}"),
        }
        assert!(matches!(round_trip(Event::Resync), Event::Resync));
    }

    #[test]
    fn an_empty_frame_round_trips() {
        match round_trip(Event::All {
            frame: Utf8Bytes::from(""),
        }) {
            Event::All { frame } => assert_eq!(frame.as_str(), ""),
            other => panic!("got {other:?}"),
        }
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let bad: &[&[u8]] = &[
            b"",
            b"wc1 A n1",
            b"wc2 A n1\n{}",
            b"wc1 Z n1\n{}",
            b"wc1 M n1 r\n{}",
            b"wc1 M n1 r x\n{}",
            b"wc1 V n1\n{}",
            b"wc1 A n1 extra\n{}",
            b"wc1 A \n{}",
            b"wc1 A n1\n\xff\xfe",
        ];
        for payload in bad {
            assert!(
                decode(Bytes::from_static(payload)).is_err(),
                "accepted {payload:?}"
            );
        }
    }
}
