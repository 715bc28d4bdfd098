//! Presence for one node on its own: socket counts per user, in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

use super::{Listing, Members, Presence, SHOWN, sort_by_name};
use crate::model::{SocketId, User};

/// Socket counts per user, for one node on its own.
#[derive(Default)]
pub struct LocalPresence {
    state: Mutex<PresenceState>,
}

#[derive(Default)]
struct PresenceState {
    /// Everyone online, listed as a room's members are.
    online: RoomState,
    rooms: HashMap<String, RoomState>,
}

#[derive(Default)]
struct RoomState {
    /// user id → the user, their sockets in the room, and when they arrived (a count).
    present: HashMap<String, (User, usize, u64)>,
    arrivals: u64,
    /// Ids of the listed people, at most `SHOWN`.
    listed: Vec<String>,
    /// The others, by arrival: the first takes a freed place, as with shared presence.
    waiting: BTreeMap<u64, String>,
    /// The listed people sorted by name, as last handed out; None once `listed` changed.
    shown: Option<Arc<[User]>>,
}

impl RoomState {
    fn enter(&mut self, user: &User) -> Listing {
        if let Some(entry) = self.present.get_mut(&user.id) {
            entry.1 += 1;
            return Listing::Unchanged;
        }
        self.arrivals += 1;
        self.present
            .insert(user.id.clone(), (user.clone(), 1, self.arrivals));
        if self.listed.len() < SHOWN {
            self.listed.push(user.id.clone());
            self.shown = None;
            Listing::Listed
        } else {
            self.waiting.insert(self.arrivals, user.id.clone());
            Listing::Counted
        }
    }

    fn leave(&mut self, user: &User) -> Listing {
        let arrived = match self.present.get_mut(&user.id) {
            None => return Listing::Unchanged,
            Some(entry) if entry.1 > 1 => {
                entry.1 -= 1;
                return Listing::Unchanged;
            }
            Some(entry) => entry.2,
        };
        self.present.remove(&user.id);
        if self.waiting.remove(&arrived).is_some() {
            return Listing::Counted;
        }
        self.listed.retain(|id| *id != user.id);
        self.shown = None;
        let promoted = self
            .waiting
            .pop_first()
            .and_then(|(_, id)| self.present.get(&id))
            .map(|(u, _, _)| u.clone());
        if let Some(next) = &promoted {
            self.listed.push(next.id.clone());
        }
        Listing::Unlisted { promoted }
    }

    fn members(&mut self) -> Members {
        let listed = match &self.shown {
            Some(listed) => listed.clone(),
            None => {
                let mut listed: Vec<User> = self
                    .listed
                    .iter()
                    .filter_map(|id| self.present.get(id).map(|(u, _, _)| u.clone()))
                    .collect();
                sort_by_name(&mut listed);
                self.shown.insert(Arc::from(listed)).clone()
            }
        };
        Members {
            more: self.present.len().saturating_sub(listed.len()),
            listed,
        }
    }
}

impl LocalPresence {
    fn with<T>(&self, f: impl FnOnce(&mut PresenceState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }
}

impl Presence for LocalPresence {
    fn connect<'a>(&'a self, _: SocketId, user: &'a User) -> BoxFuture<'a, bool> {
        let changed = self.with(|s| s.online.enter(user)) != Listing::Unchanged;
        Box::pin(async move { changed })
    }

    fn disconnect<'a>(&'a self, _: SocketId, user: &'a User) -> BoxFuture<'a, bool> {
        let changed = self.with(|s| s.online.leave(user)) != Listing::Unchanged;
        Box::pin(async move { changed })
    }

    fn enter<'a>(
        &'a self,
        _: SocketId,
        room: &'a str,
        user: &'a User,
    ) -> BoxFuture<'a, (Listing, Members)> {
        let entered = self.with(|s| {
            let state = s.rooms.entry(room.to_owned()).or_default();
            (state.enter(user), state.members())
        });
        Box::pin(async move { entered })
    }

    fn leave<'a>(&'a self, _: SocketId, room: &'a str, user: &'a User) -> BoxFuture<'a, Listing> {
        let listing = self.with(|s| {
            let Some(state) = s.rooms.get_mut(room) else {
                return Listing::Unchanged;
            };
            let listing = state.leave(user);
            if state.present.is_empty() {
                s.rooms.remove(room);
            }
            listing
        });
        Box::pin(async move { listing })
    }

    fn online_members(&self) -> BoxFuture<'_, Option<Members>> {
        let members = self.with(|s| s.online.members());
        Box::pin(async move { Some(members) })
    }

    fn online_among<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Option<Vec<String>>> {
        let online = self.with(|s| {
            ids.iter()
                .filter(|id| s.online.present.contains_key(*id))
                .cloned()
                .collect()
        });
        Box::pin(async move { Some(online) })
    }

    fn in_room<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Members> {
        let members = self.with(|s| {
            s.rooms
                .get_mut(room)
                .map(RoomState::members)
                .unwrap_or_default()
        });
        Box::pin(async move { members })
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
        let alone = Members {
            listed: vec![ann.clone()].into(),
            more: 0,
        };
        assert_eq!(p.online_members().await, Some(alone));
        let among = p.online_among(&["id-ann".into(), "id-bob".into()]).await;
        assert_eq!(among, Some(vec!["id-ann".to_owned()]));
        assert!(!p.disconnect(1, &ann).await);
        assert!(p.disconnect(2, &ann).await);
        assert_eq!(p.online_members().await, Some(Members::default()));
        assert_eq!(p.online_among(&["id-ann".into()]).await, Some(Vec::new()));

        let listed_alone = Members {
            listed: vec![ann.clone()].into(),
            more: 0,
        };
        assert_eq!(
            p.enter(1, "r", &ann).await,
            (Listing::Listed, listed_alone.clone())
        );
        assert_eq!(
            p.enter(2, "r", &ann).await,
            (Listing::Unchanged, listed_alone)
        );
        assert_eq!(p.leave(1, "r", &ann).await, Listing::Unchanged);
        assert_eq!(
            p.leave(2, "r", &ann).await,
            Listing::Unlisted { promoted: None }
        );
        assert_eq!(p.in_room("r").await, Members::default());
    }

    #[tokio::test]
    async fn a_crowded_room_lists_some_and_counts_the_rest() {
        let p = LocalPresence::default();
        let people: Vec<User> = (0..SHOWN + 3).map(|n| user(&format!("u{n:03}"))).collect();
        for (socket, person) in people.iter().enumerate() {
            let expected = if socket < SHOWN {
                Listing::Listed
            } else {
                Listing::Counted
            };
            assert_eq!(p.enter(socket as SocketId, "r", person).await.0, expected);
        }
        let members = p.in_room("r").await;
        assert_eq!((members.listed.len(), members.more), (SHOWN, 3));
        assert_eq!(members.listed[0], people[0]);
        // While the listed people stay, every reader shares one copy of them.
        let counted = p.enter(99, "r", &user("late")).await.1;
        assert!(Arc::ptr_eq(&counted.listed, &members.listed));
        assert_eq!(counted.more, 4);
        p.leave(99, "r", &user("late")).await;

        // An unlisted person leaving changes the count; a listed one makes room for the one
        // who has waited longest, as with shared presence.
        let (first_waiting, second_waiting) = (SHOWN, SHOWN + 1);
        let left = p
            .leave(second_waiting as SocketId, "r", &people[second_waiting])
            .await;
        assert_eq!(left, Listing::Counted);
        let promoted = people[first_waiting].clone();
        assert_eq!(
            p.leave(0, "r", &people[0]).await,
            Listing::Unlisted {
                promoted: Some(promoted.clone())
            }
        );
        let now = p.in_room("r").await;
        assert_eq!((now.listed.len(), now.more), (SHOWN, 1));
        assert!(now.listed.contains(&promoted));
        assert!(!Arc::ptr_eq(&now.listed, &members.listed));
    }
}
