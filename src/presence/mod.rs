//! Who is online and who is in which room.
//!
//! A user is online while any of their sockets is connected, on any node, and "in" a room
//! while any of their sockets has it active. The methods report transitions (first socket
//! in, last socket out) so callers publish a change only when other users would see one.
//!
//! A room's "who is here" list is capped like the Online list: at most `SHOWN` people are
//! listed, and the rest are a count. Which people are listed is decided where presence
//! lives (for several nodes, in Redis, atomically), so every node shows the same list, an
//! entering socket reads at most `SHOWN` names, and an arrival past the cap changes only
//! the count instead of every viewer's list.

mod local;
mod redis;
mod roster;

pub use local::LocalPresence;
pub use redis::RedisPresence;
pub use roster::{Reconciled, Roster};

/// People listed by name, at most, in the Online list and in a room's member list; the
/// rest are a count.
pub const SHOWN: usize = 50;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::model::{SocketId, User};

/// How a room's "who is here" list changed when someone came or went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// Nothing others would see: another socket of the user is (or was never) in the room.
    Unchanged,
    /// The user came or went past the cap: only the count of unlisted people changed.
    Counted,
    /// The user came, and is listed.
    Listed,
    /// The user, who was listed, went; `promoted`, unlisted until now, takes the place.
    Unlisted { promoted: Option<User> },
}

impl Listing {
    /// Whether the count of unlisted people may have changed.
    pub fn moves_count(&self) -> bool {
        matches!(
            self,
            Listing::Counted | Listing::Unlisted { promoted: Some(_) }
        )
    }
}

/// Who is in a room: the listed people by name, and how many more there are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Shared, not copied: every socket that enters a room reads its list, which changes
    /// far less often (cloning fifty people per entering socket would cost a tenth of a
    /// connect).
    pub listed: Arc<[User]>,
    pub more: usize,
}

pub trait Presence: Send + Sync {
    /// Socket `socket` of `user` connected; true when the user was offline before.
    fn connect<'a>(&'a self, socket: SocketId, user: &'a User) -> BoxFuture<'a, bool>;
    /// Socket `socket` of `user` went away; true when it was the user's last.
    fn disconnect<'a>(&'a self, socket: SocketId, user: &'a User) -> BoxFuture<'a, bool>;
    /// Socket `socket` of `user` made `room` active: `Listed` or `Counted` when the user was
    /// not in it before; and who is in the room now (read in the same step, so an entering
    /// socket costs shared presence one round trip).
    fn enter<'a>(
        &'a self,
        socket: SocketId,
        room: &'a str,
        user: &'a User,
    ) -> BoxFuture<'a, (Listing, Members)>;
    /// Socket `socket` of `user` left `room`: `Unlisted` or `Counted` when no socket of the
    /// user remains in it.
    fn leave<'a>(
        &'a self,
        socket: SocketId,
        room: &'a str,
        user: &'a User,
    ) -> BoxFuture<'a, Listing>;
    /// Who is online as the Online list shows them: at most `SHOWN` listed (by arrival,
    /// the same on every node) and how many more; None where shared presence cannot be
    /// read just now. It costs the same however many are online.
    fn online_members(&self) -> BoxFuture<'_, Option<Members>>;
    /// Which of `ids` are online; None where shared presence cannot be read just now.
    fn online_among<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Option<Vec<String>>>;
    /// Who is in `room`: at most `SHOWN` people by name, and the count of the others.
    fn in_room<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Members>;
    /// As `in_room`, or None where shared presence cannot be read just now and `in_room`
    /// would answer from this node's own sockets: fine to show a newcomer, wrong to correct
    /// other nodes' announcements by.
    fn in_room_if_known<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Option<Members>> {
        Box::pin(async move { Some(self.in_room(room).await) })
    }
    /// Periodic upkeep, for presence shared between nodes: keeps this node's entries alive
    /// and expires those of nodes that stopped without saying goodbye. Returns the changes
    /// that no socket reported, for the caller to announce.
    fn maintain(&self) -> BoxFuture<'_, Vec<Change>> {
        Box::pin(async { Vec::new() })
    }
    /// Presence reads and writes that failed since start (shared presence only).
    fn failures(&self) -> u64 {
        0
    }
}

/// A presence transition found by upkeep rather than reported by a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Online(User),
    Offline(User),
    Entered {
        room: String,
        user: User,
        listing: Listing,
    },
    Left {
        room: String,
        user: User,
        listing: Listing,
    },
}

/// By name, and by id between equal names, so every node sorts alike.
pub fn sort_by_name(users: &mut [User]) {
    users.sort_by(|a, b| (&a.username, &a.id).cmp(&(&b.username, &b.id)));
}
