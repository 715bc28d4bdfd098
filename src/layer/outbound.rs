//! What a socket's writer takes from its queue: events published to the socket's groups,
//! and the socket's own replies (the answers to its actions, the rooms it shows).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use super::Event;
use crate::model::StoredMessage;

/// What a socket's writer receives.
///
/// Two words: queues hold their items by value, up to a thousand per socket, so the size
/// of this enum is paid per slot. Broadcasts share one `Event`; what is for this socket
/// alone is boxed.
#[derive(Debug)]
pub enum Outbound {
    /// Something published to a group the socket joined.
    Event(Arc<Event>),
    /// Something for this socket alone.
    Reply(Box<Reply>),
}

const _: () = assert!(std::mem::size_of::<Outbound>() == 16);

/// What a socket's reader tells its writer: the socket's own replies, and which room it
/// shows.
#[derive(Debug)]
pub enum Reply {
    /// A frame for this socket alone.
    Frame(Utf8Bytes),
    /// Frames for this socket alone, queued as one so that they go out in one write.
    Frames(Vec<Utf8Bytes>),
    /// The socket's unread counts, as stored when it connected, and the entries of the
    /// rooms hidden from its sidebar.
    Rooms {
        /// By room: unread messages, and those of them that mention the user; a room with
        /// none is left out (the view counts from zero any room it does not hold).
        unread: HashMap<String, (i64, i64)>,
        hidden: HashMap<Arc<str>, Utf8Bytes>,
    },
    /// The socket is about to make `room` active: from here on the writer holds that
    /// room's messages and member-list changes back until the matching `Enter` shows the
    /// history and the list they follow.
    Entering { room: Arc<str> },
    /// Entering `room` failed: what was held for it is let go.
    NotEntered { room: Arc<str> },
    /// The socket now has `room` active: show `frames`, which hold every change up to seq
    /// `floor`; live events up to there are dropped. When `catching_up`, the messages
    /// after `floor` come next (`Missed`), and live ones wait for `CaughtUp`, so that a
    /// resuming client gets its backlog before anything newer.
    Enter {
        room: Arc<str>,
        floor: i64,
        frames: Vec<Utf8Bytes>,
        catching_up: bool,
    },
    /// The backlog of `room` is sent: live messages held since `Enter` follow.
    CaughtUp { room: Arc<str> },
    /// The client closed the socket: answer its close and stop.
    Goodbye,
    /// The socket shows no room now: show `frames` (saying so).
    NoRoom(Vec<Utf8Bytes>),
    /// Messages of `room` read from the store (catch-up), new or changed, accounting for
    /// every change through seq `through`; the writer shows those the socket has not
    /// shown yet.
    Missed {
        room: Arc<str>,
        messages: Vec<StoredMessage>,
        through: i64,
    },
}
