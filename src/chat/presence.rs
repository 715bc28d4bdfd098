//! Who is online and who is in which room.
//!
//! A user is online while any of their sockets is connected, on any node, and "in" a room
//! while any of their sockets has it active. The methods report transitions (first socket
//! in, last socket out) so callers publish a change only when other users would see one.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::future::BoxFuture;

use crate::layer::SocketId;
use crate::store::User;

pub trait Presence: Send + Sync {
    /// Socket `socket` of `user` connected; true when the user was offline before.
    fn connect<'a>(&'a self, socket: SocketId, user: &'a User) -> BoxFuture<'a, bool>;
    /// Socket `socket` of `user` went away; true when it was the user's last.
    fn disconnect<'a>(&'a self, socket: SocketId, user: &'a User) -> BoxFuture<'a, bool>;
    /// Socket `socket` of `user` made `room` active; true when the user was not in it before.
    fn enter<'a>(&'a self, socket: SocketId, room: &'a str, user: &'a User) -> BoxFuture<'a, bool>;
    /// Socket `socket` of `user` left `room`; true when no socket of the user remains in it.
    fn leave<'a>(&'a self, socket: SocketId, room: &'a str, user: &'a User) -> BoxFuture<'a, bool>;
    /// Everyone online, by name.
    fn online(&self) -> BoxFuture<'_, Vec<User>>;
    /// Everyone in `room`, by name.
    fn in_room<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Vec<User>>;
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
    Entered { room: String, user: User },
    Left { room: String, user: User },
}

/// Socket counts per user, for one node on its own.
#[derive(Default)]
pub struct LocalPresence {
    state: Mutex<PresenceState>,
}

#[derive(Default)]
struct PresenceState {
    online: Counts,
    rooms: HashMap<String, Counts>,
}

/// user id → (user, number of sockets).
type Counts = HashMap<String, (User, usize)>;

fn increment(counts: &mut Counts, user: &User) -> bool {
    let entry = counts
        .entry(user.id.clone())
        .or_insert_with(|| (user.clone(), 0));
    entry.1 += 1;
    entry.1 == 1
}

fn decrement(counts: &mut Counts, user: &User) -> bool {
    match counts.get_mut(&user.id) {
        Some(entry) if entry.1 > 1 => {
            entry.1 -= 1;
            false
        }
        Some(_) => {
            counts.remove(&user.id);
            true
        }
        None => false,
    }
}

fn sorted_users(counts: Option<&Counts>) -> Vec<User> {
    let mut users: Vec<User> = counts
        .map(|c| c.values().map(|(u, _)| u.clone()).collect())
        .unwrap_or_default();
    users.sort_by(|a, b| a.username.cmp(&b.username));
    users
}

impl LocalPresence {
    fn with<T>(&self, f: impl FnOnce(&mut PresenceState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }
}

impl Presence for LocalPresence {
    fn connect<'a>(&'a self, _: SocketId, user: &'a User) -> BoxFuture<'a, bool> {
        let changed = self.with(|s| increment(&mut s.online, user));
        Box::pin(async move { changed })
    }

    fn disconnect<'a>(&'a self, _: SocketId, user: &'a User) -> BoxFuture<'a, bool> {
        let changed = self.with(|s| decrement(&mut s.online, user));
        Box::pin(async move { changed })
    }

    fn enter<'a>(&'a self, _: SocketId, room: &'a str, user: &'a User) -> BoxFuture<'a, bool> {
        let changed = self.with(|s| increment(s.rooms.entry(room.to_owned()).or_default(), user));
        Box::pin(async move { changed })
    }

    fn leave<'a>(&'a self, _: SocketId, room: &'a str, user: &'a User) -> BoxFuture<'a, bool> {
        let changed = self.with(|s| {
            let Some(counts) = s.rooms.get_mut(room) else {
                return false;
            };
            let changed = decrement(counts, user);
            if counts.is_empty() {
                s.rooms.remove(room);
            }
            changed
        });
        Box::pin(async move { changed })
    }

    fn online(&self) -> BoxFuture<'_, Vec<User>> {
        let users = self.with(|s| sorted_users(Some(&s.online)));
        Box::pin(async move { users })
    }

    fn in_room<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Vec<User>> {
        let users = self.with(|s| sorted_users(s.rooms.get(room)));
        Box::pin(async move { users })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> User {
        User {
            id: format!("id-{name}"),
            username: name.into(),
        }
    }

    #[tokio::test]
    async fn two_tabs_are_one_user() {
        let p = LocalPresence::default();
        let ann = user("ann");
        assert!(p.connect(1, &ann).await);
        assert!(!p.connect(2, &ann).await);
        assert_eq!(p.online().await, vec![ann.clone()]);
        assert!(!p.disconnect(1, &ann).await);
        assert!(p.disconnect(2, &ann).await);
        assert!(p.online().await.is_empty());

        assert!(p.enter(1, "r", &ann).await);
        assert!(!p.enter(2, "r", &ann).await);
        assert!(!p.leave(1, "r", &ann).await);
        assert!(p.leave(2, "r", &ann).await);
        assert!(p.in_room("r").await.is_empty());
    }
}
