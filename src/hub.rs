//! What every socket on this node shares: storage, the channel layer, presence, limits,
//! and the shutdown signal.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::chat::presence::{Change, Listing, Presence};
use crate::chat::protocol::{Swap, frame};
use crate::chat::rate::RateLimiter;
use crate::chat::roster::Roster;
use crate::layer::{ChannelLayer, Event, LOBBY, room_group, user_group};
use crate::store::{Store, User};
use crate::views;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest message text, in characters.
    pub max_message_chars: usize,
    /// Frames a socket may have waiting before it counts as too slow and is closed.
    pub outbound_queue: usize,
    /// Largest WebSocket message accepted at all; larger ones close the socket.
    pub max_frame_bytes: usize,
    /// Rooms one user may belong to.
    pub max_rooms_per_user: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_chars: 4000,
            outbound_queue: 1024,
            max_frame_bytes: 64 * 1024,
            max_rooms_per_user: 500,
        }
    }
}

pub struct Hub {
    pub store: Store,
    pub layer: Arc<dyn ChannelLayer>,
    pub presence: Arc<dyn Presence>,
    pub limits: Limits,
    pub rate: RateLimiter,
    /// Cancelled when the node shuts down; every socket then closes with 1012.
    pub shutdown: CancellationToken,
    /// The capped "Online" list new sockets are shown.
    pub roster: Roster,
    /// Woken when someone comes or goes, so the roster's count is announced soon.
    pub roster_changed: Notify,
    /// Rooms whose member list or count this node announced, to announce or check soon.
    pub room_changes: RoomChanges,
}

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

/// The roster is reconciled with presence at least this often (other nodes' arrivals and
/// departures reach it no other way)...
const ROSTER_EVERY: Duration = Duration::from_secs(1);
/// ...and at most this often, however many people come and go: the count goes to every
/// socket, so a connect storm costs each socket a few frames a second, not one per arrival.
const ROSTER_COALESCE: Duration = Duration::from_millis(250);

impl Hub {
    /// Tells everyone that `user` came online (their first socket anywhere) or went
    /// offline (their last): the "Online" list when it shows them, and the people they
    /// have conversations with (`peers`, by id), whose sidebars show a dot for them.
    pub async fn announce_presence(&self, user: &User, online: bool, peers: &[String]) {
        let mut events = Vec::with_capacity(peers.len() + 1);
        let (listed, contact) = if online {
            let add = frame(
                "#people",
                Swap::BeforeEnd,
                &views::person(user).into_string(),
            );
            let mark = frame(
                "#contacts",
                Swap::BeforeEnd,
                &views::contact(&user.id).into_string(),
            );
            (self.roster.arrived(user).then_some(add), mark)
        } else {
            let remove = frame(&format!("#person-{}", user.id), Swap::Remove, "");
            let unmark = frame(&format!("#on-{}", user.id), Swap::Remove, "");
            (self.roster.departed(user).then_some(remove), unmark)
        };
        if let Some(frame) = listed {
            events.push((LOBBY.to_owned(), Event::All { frame }));
        }
        for peer in peers {
            let frame = contact.clone();
            events.push((user_group(peer), Event::All { frame }));
        }
        for (group, event) in events {
            if let Err(e) = self.layer.publish(&group, event).await {
                tracing::warn!(error = %e, group, "presence change not published");
            }
        }
        self.roster_changed.notify_one();
    }

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
        "#room-members",
        Swap::BeforeEnd,
        &views::member(user).into_string(),
    )
}

fn member_removed(user: &User) -> Utf8Bytes {
    frame(&format!("#member-{}", user.id), Swap::Remove, "")
}

/// Rooms whose count changed are announced together, at most this often...
const ROOM_COUNTS_COALESCE: Duration = Duration::from_millis(250);
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
    loop {
        let settle = async {
            if rounds.is_settled() {
                std::future::pending().await
            } else {
                tokio::time::sleep(ROOM_COUNTS_SETTLE).await
            }
        };
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = hub.room_changes.wake.notified() => {}
            _ = settle => {}
        }
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
        for room in rooms {
            let checks = checking.get(room);
            let Some(members) = hub.presence.in_room_if_known(room).await else {
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
                    "#room-members-more",
                    Swap::Inner,
                    &views::people_more(members.more),
                ));
            }
            hub.tell_viewers(room, frames).await;
        }
    }
}

/// Keeps the roster in line with presence, announcing the count and what no socket did.
pub async fn maintain_roster(hub: Arc<Hub>) {
    loop {
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = hub.roster_changed.notified() => {}
            _ = tokio::time::sleep(ROSTER_EVERY) => {}
        }
        let online = hub.presence.online().await;
        let changes = hub.roster.reconcile(&online);
        let mut frames = Vec::new();
        for user in &changes.unlisted {
            frames.push(frame(&format!("#person-{}", user.id), Swap::Remove, ""));
        }
        for user in &changes.listed {
            let html = views::person(user).into_string();
            frames.push(frame("#people", Swap::BeforeEnd, &html));
        }
        if let Some(more) = changes.more {
            frames.push(frame(
                "#people-more",
                Swap::Inner,
                &views::people_more(more),
            ));
        }
        for frame in frames {
            if let Err(e) = hub.layer.publish(LOBBY, Event::All { frame }).await {
                tracing::warn!(error = %e, "roster change not published");
            }
        }
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tokio::time::sleep(ROSTER_COALESCE) => {}
        }
    }
}

/// Runs presence upkeep every `every` until the node shuts down, announcing what it finds:
/// users whose node died without saying goodbye, and entries written back after an outage.
pub async fn maintain_presence(hub: Arc<Hub>, every: Duration) {
    // Announcing what upkeep found runs beside it: after a big node dies that is a store
    // read per person, and the heartbeat must keep its pace meanwhile, or this node is
    // taken for dead too.
    let (found, to_announce) = mpsc::unbounded_channel();
    tokio::spawn(announce_changes(hub.clone(), to_announce));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let changes = hub.presence.maintain().await;
        if !changes.is_empty() && found.send(changes).is_err() {
            return;
        }
    }
}

/// Announces the presence changes upkeep found, in the order it found them.
async fn announce_changes(hub: Arc<Hub>, mut found: mpsc::UnboundedReceiver<Vec<Change>>) {
    while let Some(changes) = found.recv().await {
        for change in changes {
            tracing::debug!(?change, "presence changed without its socket saying so");
            match &change {
                Change::Online(user) | Change::Offline(user) => {
                    let online = matches!(change, Change::Online(_));
                    let peers = match hub.store.rooms_of(&user.id).await {
                        Ok(rooms) => rooms
                            .into_iter()
                            .filter_map(|r| r.peer.map(|p| p.id))
                            .collect(),
                        Err(e) => {
                            tracing::warn!(error = %e, "conversation partners not found");
                            Vec::new()
                        }
                    };
                    hub.announce_presence(user, online, &peers).await;
                }
                Change::Entered {
                    room,
                    user,
                    listing,
                } => hub.announce_restored(room, user, listing).await,
                Change::Left {
                    room,
                    user,
                    listing,
                } => hub.announce_listing(room, user, listing).await,
            }
        }
    }
}
