//! Room member lists as viewers see them: what changed when someone came or went, the
//! "and N more" count announced by each node once a second at most, and a second look a
//! round later at what this node announced, since nodes' announcements reach Redis in an
//! order of their own.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use super::Hub;
use crate::chat::protocol::{Swap, frame};
use crate::layer::{Event, room_group};
use crate::model::User;
use crate::presence::Listing;
use crate::views::{self, target};

/// What this node announced about rooms' "who is here", collected between rounds of
/// `announce_room_members`.
#[derive(Default)]
pub struct RoomChanges {
    changed: Mutex<Announced>,
    wake: Notify,
}

#[derive(Default)]
struct Announced {
    /// Rooms whose "and N more" changed here, to announce.
    counts: HashSet<String>,
    /// Per room, the people this node added to (true) or removed from (false) its list,
    /// by id: to look at again once other nodes' announcements have landed.
    listed: HashMap<String, HashMap<String, (User, bool)>>,
}

impl RoomChanges {
    /// Records a change; the first one since the last round wakes the announcer.
    fn record(&self, change: impl FnOnce(&mut Announced)) {
        let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        let first = changed.counts.is_empty() && changed.listed.is_empty();
        change(&mut changed);
        if first {
            self.wake.notify_one();
        }
    }

    fn count_changed(&self, room: &str) {
        self.record(|c| {
            c.counts.insert(room.to_owned());
        });
    }

    fn list_changed(&self, room: &str, user: &User, shown: bool) {
        self.record(|c| {
            let room = c.listed.entry(room.to_owned()).or_default();
            room.insert(user.id.clone(), (user.clone(), shown));
        });
    }

    fn take(&self) -> Announced {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Hub {
    /// Tells the people viewing `room` how its "who is here" list changed when `user` came
    /// or went. A change of the count alone is announced later, with others.
    pub async fn announce_listing(&self, room: &str, user: &User, listing: &Listing) {
        let frames = match listing {
            Listing::Unchanged | Listing::Counted => Vec::new(),
            Listing::Listed => {
                self.room_changes.list_changed(room, user, true);
                vec![member_added(user)]
            }
            Listing::Unlisted { promoted } => {
                self.room_changes.list_changed(room, user, false);
                let mut frames = vec![member_removed(user)];
                if let Some(promoted) = promoted {
                    self.room_changes.list_changed(room, promoted, true);
                    frames.push(member_added(promoted));
                }
                frames
            }
        };
        self.tell_viewers(room, frames).await;
        if listing.moves_count() {
            self.room_changes.count_changed(room);
        }
    }

    /// Like `announce_listing`, for an entry this node wrote back after Redis lost it. The
    /// list is rebuilt in the order nodes write back, so someone viewers saw listed before
    /// may now only be counted: they are told to drop that name.
    pub async fn announce_restored(&self, room: &str, user: &User, listing: &Listing) {
        if *listing == Listing::Counted {
            self.room_changes.list_changed(room, user, false);
            self.tell_viewers(room, vec![member_removed(user)]).await;
        }
        self.announce_listing(room, user, listing).await;
    }

    /// Publishes `frames` to the sockets showing `room`.
    async fn tell_viewers(&self, room: &str, frames: Vec<Utf8Bytes>) {
        let group = room_group(room);
        for frame in frames {
            let event = Event::Viewers {
                room: Arc::from(room),
                frame,
            };
            if let Err(e) = self.layer.publish(&group, event).await {
                tracing::warn!(error = %e, group, "room presence change not published");
            }
        }
    }
}

fn member_added(user: &User) -> Utf8Bytes {
    frame(
        target::ROOM_MEMBERS,
        Swap::BeforeEnd,
        &views::member(user).into_string(),
    )
}

fn member_removed(user: &User) -> Utf8Bytes {
    frame(&target::member(&user.id), Swap::Remove, "")
}

/// Rooms whose count changed are announced together, at most this often (a crowded room's
/// count goes to every socket showing it, as the Online list's goes to all: see
/// `ROSTER_COALESCE`)...
const ROOM_COUNTS_COALESCE: Duration = Duration::from_secs(1);
/// ...and read once more this much later: another node may have announced an older count
/// after this one's, and the second look puts the right one back.
const ROOM_COUNTS_SETTLE: Duration = Duration::from_secs(1);

/// Announces each room's "and N more" to its viewers after people came or went past the
/// cap: one frame per room per round, however many came. And looks again, a round later,
/// at what this node added to or removed from room member lists: two nodes' changes to a
/// list are published in the order they reach Redis, not the order presence made them, so
/// an add may land after the removal that followed it. Where the list now says otherwise,
/// the node corrects its own announcement (and looks once more after that).
pub async fn announce_room_members(hub: Arc<Hub>) {
    let mut rounds = RoomRounds::default();
    let mut last = tokio::time::Instant::now();
    loop {
        // From the last round, not from the end of the pause after it.
        let settle = async {
            if rounds.is_settled() {
                std::future::pending().await
            } else {
                tokio::time::sleep_until(last + ROOM_COUNTS_SETTLE).await
            }
        };
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = hub.room_changes.wake.notified() => {}
            _ = settle => {}
        }
        last = tokio::time::Instant::now();
        rounds.next(&hub).await;
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tokio::time::sleep(ROOM_COUNTS_COALESCE) => {}
        }
    }
}

/// What `announce_room_members` carries from one round to the next.
#[derive(Default)]
struct RoomRounds {
    /// The counts announced last round, for the second look.
    announced: HashMap<String, usize>,
    /// The list changes to look at again next round: room → user id → (user, shown).
    to_check: HashMap<String, HashMap<String, (User, bool)>>,
    /// Rooms whose count changed but could not be read (Redis unreachable).
    unread: HashSet<String>,
}

impl RoomRounds {
    /// Nothing is left to look at again.
    fn is_settled(&self) -> bool {
        self.announced.is_empty() && self.to_check.is_empty() && self.unread.is_empty()
    }

    /// Announces the counts that changed, looks again at last round's, and checks last
    /// round's list changes against the lists now.
    async fn next(&mut self, hub: &Hub) {
        let changed = hub.room_changes.take();
        let previous = std::mem::take(&mut self.announced);
        let checking = std::mem::replace(&mut self.to_check, changed.listed);
        let mut fresh = changed.counts;
        fresh.extend(std::mem::take(&mut self.unread));
        let rooms: HashSet<&String> = fresh
            .iter()
            .chain(previous.keys())
            .chain(checking.keys())
            .collect();
        // Once a read fails, the other rooms are not tried this round: each try would
        // wait for the failure and log it.
        let mut unreachable = false;
        for room in rooms {
            let checks = checking.get(room);
            let members = if unreachable {
                None
            } else {
                hub.presence.in_room_if_known(room).await
            };
            let Some(members) = members else {
                unreachable = true;
                // This node's own sockets are not the room: neither count nor check goes
                // by them. Both wait for a round in which Redis answers.
                for (id, change) in checks.into_iter().flatten() {
                    let pending = self.to_check.entry(room.clone()).or_default();
                    pending.entry(id.clone()).or_insert_with(|| change.clone());
                }
                if fresh.contains(room) || previous.contains_key(room) {
                    self.unread.insert(room.clone());
                }
                continue;
            };
            let mut frames = Vec::new();
            for (user, shown) in checks.into_iter().flat_map(|c| c.values()) {
                // A newer change of this node's for the same person (who came and went
                // within a round) supersedes this one, and is checked next round.
                let pending = self.to_check.get(room.as_str());
                if pending.is_some_and(|p| p.contains_key(&user.id)) {
                    continue;
                }
                let listed = members.listed.iter().any(|u| u.id == user.id);
                if listed != *shown {
                    frames.push(if listed {
                        member_added(user)
                    } else {
                        member_removed(user)
                    });
                    let pending = self.to_check.entry(room.clone()).or_default();
                    pending.insert(user.id.clone(), (user.clone(), listed));
                }
            }
            let is_fresh = fresh.contains(room);
            if is_fresh {
                self.announced.insert(room.clone(), members.more);
            }
            if is_fresh || previous.get(room).is_some_and(|&more| more != members.more) {
                frames.push(frame(
                    target::ROOM_MEMBERS_MORE,
                    Swap::Inner,
                    &views::people_more(members.more),
                ));
            }
            hub.tell_viewers(room, frames).await;
        }
    }
}
