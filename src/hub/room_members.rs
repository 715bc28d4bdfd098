//! Room member lists as viewers see them: what changed when someone came or went, the
//! "and N more" count announced by each node once a second at most, and a second look a
//! round later at what this node announced, since nodes' announcements reach Redis in an
//! order of their own. A listed person leaving a crowded room, and whoever takes the
//! place, are announced with the round too: in a storm of departures each viewer is told
//! how the list changed once a round, not twice per departure.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use super::Hub;
use crate::chat::protocol::{Swap, frame};
use crate::layer::{Event, room_group};
use crate::model::User;
use crate::presence::{Listing, SHOWN};
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
    /// Per room, the changes to its list that wait for the round to reach viewers: by id,
    /// each person's last (listed or not). The last, even for someone who came and went
    /// between rounds: a socket that entered meanwhile was shown them.
    unannounced: HashMap<String, HashMap<String, (User, bool)>>,
    /// Rooms whose waiting changes a round has taken and is still publishing. While a room
    /// has changes waiting or being published, its other changes wait for the next round:
    /// published at once, they could be overtaken by older ones about the same person.
    publishing: HashSet<String>,
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

    /// Records changes to `room`'s list (each user, and whether now listed) for the second
    /// look, and says which frames tell viewers now; none when the changes wait for the
    /// round (`wait`, or others in the room already wait).
    fn list_changed(&self, room: &str, changes: &[(&User, bool)], wait: bool) -> Vec<Utf8Bytes> {
        let mut now = Vec::new();
        self.record(|c| {
            let checks = c.listed.entry(room.to_owned()).or_default();
            for (user, shown) in changes {
                checks.insert(user.id.clone(), ((*user).clone(), *shown));
            }
            if !(wait || c.unannounced.contains_key(room) || c.publishing.contains(room)) {
                now = changes
                    .iter()
                    .map(|&(user, shown)| member_frame(user, shown))
                    .collect();
                return;
            }
            let waiting = c.unannounced.entry(room.to_owned()).or_default();
            for &(user, shown) in changes {
                waiting.insert(user.id.clone(), (user.clone(), shown));
            }
        });
        now
    }

    /// What changed since the last round. The rooms whose changes waited count as being
    /// published until `published`.
    fn take(&self) -> Announced {
        let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        let taken = std::mem::take(&mut *changed);
        changed.publishing = taken.unannounced.keys().cloned().collect();
        taken
    }

    /// Puts back changes a round took but could not publish, behind any made since.
    fn wait_again(&self, room: &str, waiting: HashMap<String, (User, bool)>) {
        self.record(|c| {
            let now = c.unannounced.entry(room.to_owned()).or_default();
            for (id, change) in waiting {
                now.entry(id).or_insert(change);
            }
        });
    }

    /// The changes to `room`'s list that waited have been published.
    fn published(&self, room: &str) {
        let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        changed.publishing.remove(room);
    }
}

impl Hub {
    /// Tells the people viewing `room` how its "who is here" list changed when `user` came
    /// or went. A change of the count alone is announced later, with others.
    pub async fn announce_listing(&self, room: &str, user: &User, listing: &Listing) {
        let frames = match listing {
            Listing::Unchanged | Listing::Counted => Vec::new(),
            Listing::Listed => self.room_changes.list_changed(room, &[(user, true)], false),
            Listing::Unlisted { promoted: None } => {
                self.room_changes
                    .list_changed(room, &[(user, false)], false)
            }
            // Someone waited for the place: both go with the round.
            Listing::Unlisted {
                promoted: Some(promoted),
            } => self
                .room_changes
                .list_changed(room, &[(user, false), (promoted, true)], true),
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
            let frames = self
                .room_changes
                .list_changed(room, &[(user, false)], false);
            self.tell_viewers(room, frames).await;
        }
        self.announce_listing(room, user, listing).await;
    }

    /// The frame showing `listed` as `room`'s list, whole: what an entering socket is shown.
    pub fn members_frame(&self, room: &str, listed: &Arc<[User]>) -> Utf8Bytes {
        self.list_frames.frame(room, listed, |listed| {
            let html = views::members(listed).into_string();
            frame(target::ROOM_MEMBERS, Swap::Inner, &html)
        })
    }

    /// Publishes `frames` to the sockets showing `room`.
    async fn tell_viewers(&self, room: &str, frames: Vec<Utf8Bytes>) {
        self.publish_all(viewers_events(room, frames), "room presence change")
            .await;
    }
}

/// `frames` as events for the sockets showing `room`.
fn viewers_events(room: &str, frames: Vec<Utf8Bytes>) -> Vec<(String, Event)> {
    let (group, room): (String, Arc<str>) = (room_group(room), Arc::from(room));
    frames
        .into_iter()
        .map(|frame| {
            let room = room.clone();
            (group.clone(), Event::Viewers { room, frame })
        })
        .collect()
}

/// The frame that adds `user` to a room's list (`shown`) or takes them off it.
fn member_frame(user: &User, shown: bool) -> Utf8Bytes {
    if shown {
        let html = views::member(user).into_string();
        frame(target::ROOM_MEMBERS, Swap::BeforeEnd, &html)
    } else {
        frame(&target::member(&user.id), Swap::Remove, "")
    }
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

/// Publishes what waits for a round: the changes to rooms' member lists, and the counts
/// that changed with them; then looks once more, as the next round would, at what it
/// published.
pub(super) async fn announce_room_changes_left(hub: &Hub) {
    let mut rounds = RoomRounds::default();
    rounds.next(hub).await;
    rounds.next(hub).await;
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
    /// Rooms whose list this node sent whole for the changes that waited, and the list it
    /// sent: looked at again next round, since another node's change may have reached
    /// viewers just before it.
    wholes: HashMap<String, Arc<[User]>>,
}

impl RoomRounds {
    /// Nothing is left to look at again.
    fn is_settled(&self) -> bool {
        self.announced.is_empty()
            && self.to_check.is_empty()
            && self.unread.is_empty()
            && self.wholes.is_empty()
    }

    /// Announces the list changes that waited and the counts that changed, looks again at
    /// last round's counts, and checks last round's list changes against the lists now.
    /// More changes to a room's list than the list shows (people leaving in the order they
    /// came, each listed in turn) go as the list whole: a round's frames must fit in each
    /// viewer's queue.
    async fn next(&mut self, hub: &Hub) {
        let mut changed = hub.room_changes.take();
        let sent_whole = std::mem::take(&mut self.wholes);
        let mut waited = Vec::new();
        let rooms_waited: Vec<String> = changed.unannounced.keys().cloned().collect();
        for (room, waiting) in std::mem::take(&mut changed.unannounced) {
            if waiting.len() <= SHOWN {
                let frames = waiting
                    .values()
                    .map(|(user, shown)| member_frame(user, *shown))
                    .collect();
                waited.extend(viewers_events(&room, frames));
            } else if let Some(members) = hub.presence.in_room_if_known(&room).await {
                let frame = hub.members_frame(&room, &members.listed);
                waited.extend(viewers_events(&room, vec![frame]));
                self.wholes.insert(room.clone(), members.listed);
            } else {
                // Without the list, the changes wait for a round that can read it.
                hub.room_changes.wait_again(&room, waiting);
            }
        }
        hub.publish_all(waited, "room presence change").await;
        for room in &rooms_waited {
            hub.room_changes.published(room);
        }
        let previous = std::mem::take(&mut self.announced);
        let checking = std::mem::replace(&mut self.to_check, changed.listed);
        let mut fresh = changed.counts;
        fresh.extend(std::mem::take(&mut self.unread));
        let rooms: HashSet<&String> = fresh
            .iter()
            .chain(previous.keys())
            .chain(checking.keys())
            .chain(sent_whole.keys())
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
                if let Some(sent) = sent_whole.get(room) {
                    self.wholes
                        .entry(room.clone())
                        .or_insert_with(|| sent.clone());
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
                    frames.push(member_frame(user, listed));
                    let pending = self.to_check.entry(room.clone()).or_default();
                    pending.insert(user.id.clone(), (user.clone(), listed));
                }
            }
            // Too many corrections, or a list sent whole last round that presence no longer
            // shows: the list whole, once (a busy room's list differs every round). Not
            // when this round already sent it whole.
            let stale = sent_whole
                .get(room)
                .is_some_and(|sent| **sent != *members.listed);
            if self.wholes.contains_key(room) {
                frames.clear();
            } else if stale || frames.len() > SHOWN {
                frames = vec![hub.members_frame(room, &members.listed)];
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

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: usize) -> User {
        User {
            id: format!("id-{n}"),
            username: format!("user{n}"),
        }
    }

    /// What `frames` tell viewers, as "+id" for an addition and "-id" for a removal.
    fn told(frames: impl IntoIterator<Item = Utf8Bytes>) -> Vec<String> {
        let mut told: Vec<String> = frames
            .into_iter()
            .map(|f| {
                let f: serde_json::Value = serde_json::from_str(f.as_str()).expect("json");
                let html = f["html"].as_str().unwrap_or_default();
                match f["selector"]
                    .as_str()
                    .unwrap_or_default()
                    .strip_prefix("#member-")
                {
                    Some(id) => format!("-{id}"),
                    None => format!("+{}", attr_id(html)),
                }
            })
            .collect();
        told.sort();
        told
    }

    fn attr_id(html: &str) -> &str {
        let rest = html.split("id=\"member-").nth(1).unwrap_or_default();
        rest.split('"').next().unwrap_or_default()
    }

    #[test]
    fn changes_that_wait_reach_viewers_once_a_round() {
        let changes = RoomChanges::default();
        // An arrival with room to spare is told at once.
        let now = changes.list_changed("r", &[(&user(1), true)], false);
        assert_eq!(told(now), ["+id-1"]);
        // A listed person leaves a crowded room: the removal and the promotion wait.
        let now = changes.list_changed("r", &[(&user(1), false), (&user(2), true)], true);
        assert!(now.is_empty());
        // Whatever else changes in that room waits behind them; other rooms are told at
        // once.
        assert!(
            changes
                .list_changed("r", &[(&user(3), true)], false)
                .is_empty()
        );
        let now = changes.list_changed("s", &[(&user(4), true)], false);
        assert_eq!(told(now), ["+id-4"]);
        // The promoted one leaves before the round: viewers are told only that, each
        // person's last change (a socket entering meanwhile was shown them).
        let now = changes.list_changed("r", &[(&user(2), false), (&user(5), true)], true);
        assert!(now.is_empty());

        let round = changes.take();
        let waited = round.unannounced.get("r").expect("r waited");
        let frames = waited.values().map(|(u, shown)| member_frame(u, *shown));
        assert_eq!(told(frames), ["+id-3", "+id-5", "-id-1", "-id-2"]);
        assert!(!round.unannounced.contains_key("s"));
        assert!(!round.listed["r"]["id-2"].1);
        // Until the round has published them, the room's next changes wait for the next
        // round: told now, they could reach viewers before the older ones.
        assert!(
            changes
                .list_changed("r", &[(&user(5), false)], false)
                .is_empty()
        );
        changes.published("r");
        let round = changes.take();
        assert!(!round.unannounced["r"]["id-5"].1);
        changes.published("r");
        // After that, the room's changes are told at once again.
        let now = changes.list_changed("r", &[(&user(6), true)], false);
        assert_eq!(told(now), ["+id-6"]);
    }
}
