//! The channel layer: publish an event to a group, and deliver each group's events to the
//! sockets on this node that joined it.
//!
//! A group is named by an internal id (`room:<uuid>`, `user:<uuid>`, `lobby`), never by
//! text a client chose. Events carry frames already serialised by the node that produced
//! them; delivering one is a reference-count increment and a queue push per socket.

mod local;
pub mod metrics;
mod outbound;
pub mod outbox;
mod pacing;
pub mod redis;
mod registry;
mod wire;

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use futures_util::future::BoxFuture;

pub use crate::model::SocketId;
pub use local::LocalLayer;
pub use outbound::{Outbound, Reply};
pub use pacing::WritePacing;
pub use redis::RedisLayer;
pub use registry::{Registry, Subscriber};

/// Something that happened in a group, with the frame to show for it.
#[derive(Debug, Clone)]
pub enum Event {
    /// A stored message. Sockets with `room` active show `frame`; the room's other members
    /// count it as unread.
    Message {
        room: Arc<str>,
        seq: i64,
        frame: Utf8Bytes,
    },
    /// A stored message edited or deleted, as change `seq` of `room`: sockets with the room
    /// active replace its article with `frame`; nobody counts it as unread.
    Changed {
        room: Arc<str>,
        seq: i64,
        frame: Utf8Bytes,
    },
    /// A change only the sockets with `room` active show (who is here, typing).
    Viewers { room: Arc<str>, frame: Utf8Bytes },
    /// A change every socket in the group shows (presence, new groups).
    All { frame: Utf8Bytes },
    /// Delivery to this node may have had a gap (the layer lost and regained its
    /// connection): each socket fetches what it missed from the store.
    Resync,
    /// The user was added to `room` (a conversation, a group they joined or created), or
    /// may use it again: start following it, and show `frame` (its sidebar entry).
    RoomAdded { room: Arc<str>, frame: Utf8Bytes },
    /// The user left `room`, or may no longer use it (a block): stop following it, take it
    /// out of the sidebar, and post nothing more to it.
    RoomRemoved { room: Arc<str> },
    /// The user hid `room`: take it out of the sidebar, and put `frame` (its entry) back
    /// when a message comes.
    RoomHidden { room: Arc<str>, frame: Utf8Bytes },
    /// A session was ended (logged out): its sockets close. `session` is a digest of the
    /// session's id, never the id itself.
    SessionEnded { session: Arc<str> },
}

/// Why an event did not reach the other nodes (this node's sockets got it regardless).
/// Shared, because the publications of one pipeline fail together.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// No connection to Redis could be had from the pool.
    #[error("no connection to Redis: {0}")]
    Connection(#[source] Arc<deadpool_redis::PoolError>),
    /// Redis refused or dropped the PUBLISH.
    #[error("PUBLISH failed: {0}")]
    Command(#[source] Arc<deadpool_redis::redis::RedisError>),
    /// The node is stopping.
    #[error("the node is stopping")]
    Stopped,
}

pub trait ChannelLayer: Send + Sync {
    /// Sends `event` to every socket, on every node, that joined `group`.
    fn publish<'a>(
        &'a self,
        group: &'a str,
        event: Event,
    ) -> BoxFuture<'a, Result<(), PublishError>>;

    /// The sockets on this node and the groups they joined.
    fn registry(&self) -> &Registry;

    /// Adds a local socket to `group`. The socket is registered before this returns; the
    /// future resolves once events published to the group from now on will reach it (for
    /// a distributed layer, once the node's subscription is confirmed), so a caller that
    /// then reads history cannot miss a message between the two.
    fn join(&self, group: &str, member: &Subscriber) -> BoxFuture<'static, ()> {
        self.registry().join(group, member);
        Box::pin(async {})
    }

    /// Removes a local socket from one group.
    fn leave(&self, group: &str, socket: SocketId) {
        self.registry().leave(group, socket);
    }

    /// Removes a local socket from all its groups.
    fn leave_all(&self, socket: SocketId) {
        self.registry().leave_all(socket);
    }

    /// How many groups this node currently receives events for.
    fn subscribed(&self) -> usize {
        self.registry().group_count()
    }

    /// The service this layer relies on, for readiness checks: its name and whether it
    /// answers now. `None` when the layer needs nothing outside this process.
    fn backend_status(&self) -> BoxFuture<'_, Option<(&'static str, Result<(), String>)>> {
        Box::pin(async { None })
    }
}

/// The group every socket joins: presence and new public groups.
pub const LOBBY: &str = "lobby";

/// What every room's group is named with (`room_group`).
const ROOM_GROUP: &str = "room:";

pub fn room_group(room_id: &str) -> String {
    format!("{ROOM_GROUP}{room_id}")
}

pub fn user_group(user_id: &str) -> String {
    format!("user:{user_id}")
}
