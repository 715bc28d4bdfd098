//! What every socket on this node shares: storage, the channel layer, presence, limits,
//! and the shutdown signal; and the node's announcements of who came and went (room
//! member lists in `room_members`, and their frames for entering sockets in `list_frames`);
//! rooms' latest pages, shared by the sockets entering them, in `pages`.

mod list_frames;
mod pages;
mod room_members;

pub use list_frames::ListFrames;
pub use pages::{Page, Pages};
pub use room_members::{RoomChanges, announce_room_members};

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::future::join_all;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::chat::protocol::{Swap, frame};
use crate::chat::rate::RateLimiter;
use crate::layer::{ChannelLayer, Event, LOBBY, WritePacing, user_group};
use crate::model::User;
use crate::presence::Roster;
use crate::presence::{Change, Presence};
use crate::store::Store;
use crate::views::{self, target};

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
    /// Most messages a catch-up or resume sends before the room is shown afresh instead.
    pub catch_up_limit: i64,
    /// Groups one user (or address) may create an hour.
    pub new_groups_per_hour: i64,
    /// Conversations one user may start an hour.
    pub new_conversations_per_hour: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_chars: 4000,
            outbound_queue: 1024,
            max_frame_bytes: 64 * 1024,
            max_rooms_per_user: 500,
            catch_up_limit: 500,
            new_groups_per_hour: 10,
            new_conversations_per_hour: 30,
        }
    }
}

pub struct Hub {
    pub store: Store,
    pub layer: Arc<dyn ChannelLayer>,
    pub presence: Arc<dyn Presence>,
    pub limits: Limits,
    /// Messages per user.
    pub rate: RateLimiter,
    /// Cost units per user for every other action (see `chat::rate::action_cost`).
    pub budget: RateLimiter,
    /// Groups created per address on this node, an hour.
    pub new_groups_by_address: RateLimiter,
    /// Cancelled when the node shuts down; every socket then closes with 1012.
    pub shutdown: CancellationToken,
    /// The capped "Online" list new sockets are shown.
    pub roster: Roster,
    /// Woken when someone comes or goes, so the roster's count is announced soon.
    pub roster_changed: Notify,
    /// Rooms whose member list or count this node announced, to announce or check soon.
    pub room_changes: RoomChanges,
    /// How long a busy node's sockets wait between writes.
    pub pacing: WritePacing,
    /// Room member lists as last shown to an entering socket.
    pub list_frames: ListFrames,
    /// Rooms' latest pages as last read for an entering socket.
    pub pages: Pages,
}

/// The roster is reconciled with presence at least this often (other nodes' arrivals and
/// departures reach it no other way)...
const ROSTER_EVERY: Duration = Duration::from_secs(1);
/// ...and at most this often, however many people come and go: the count goes to every
/// socket, so a connect storm costs each socket a frame a second from each node, not one
/// per arrival. Each such frame is a write on every socket of the node: at four a second,
/// 15,000 people connecting at once cost a sixth more CPU each.
const ROSTER_COALESCE: Duration = Duration::from_secs(1);

impl Hub {
    /// Publishes `event` to `group`; a failure is logged (this node's sockets got the
    /// event regardless, and the others catch up from the store).
    pub async fn publish(&self, group: &str, event: Event) {
        if let Err(e) = self.layer.publish(group, event).await {
            tracing::warn!(error = %e, group, "publish failed");
        }
    }

    /// Tells everyone that `user` came online (their first socket anywhere) or went
    /// offline (their last): the "Online" list when it shows them, and the people they
    /// have conversations with (`peers`, by id), whose sidebars show a dot for them.
    pub async fn announce_presence(&self, user: &User, online: bool, peers: &[String]) {
        let mut events = Vec::with_capacity(peers.len() + 1);
        let (listed, contact) = if online {
            let add = frame(
                target::PEOPLE,
                Swap::BeforeEnd,
                &views::person(user).into_string(),
            );
            let mark = frame(
                target::CONTACTS,
                Swap::BeforeEnd,
                &views::contact(&user.id).into_string(),
            );
            (self.roster.arrived(user).then_some(add), mark)
        } else {
            let remove = person_removed(user);
            let unmark = frame(&target::contact(&user.id), Swap::Remove, "");
            (self.roster.departed(user).then_some(remove), unmark)
        };
        if let Some(frame) = listed {
            events.push((LOBBY.to_owned(), Event::All { frame }));
        }
        for peer in peers {
            let frame = contact.clone();
            events.push((user_group(peer), Event::All { frame }));
        }
        self.publish_all(events, "presence change").await;
        self.roster_changed.notify_one();
    }

    /// Publishes each event to its group; failures are logged as `what` not published.
    /// Each event reaches this node's sockets as it is published, in order, and Redis's
    /// answers are awaited together: a slow Redis holds no event back behind another.
    async fn publish_all(&self, events: Vec<(String, Event)>, what: &str) {
        let (groups, events): (Vec<String>, Vec<Event>) = events.into_iter().unzip();
        let sent: Vec<_> = groups
            .iter()
            .zip(events)
            .map(|(group, event)| self.layer.publish(group, event))
            .collect();
        for (group, result) in groups.iter().zip(join_all(sent).await) {
            if let Err(e) = result {
                tracing::warn!(error = %e, group, "{what} not published");
            }
        }
    }
}

/// Keeps the roster in line with presence, announcing the count and what no socket did.
pub async fn maintain_roster(hub: Arc<Hub>) {
    let mut last = tokio::time::Instant::now();
    loop {
        // From the last reconcile, not from the end of the pause after it.
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = hub.roster_changed.notified() => {}
            _ = tokio::time::sleep_until(last + ROSTER_EVERY) => {}
        }
        last = tokio::time::Instant::now();
        reconcile_roster(&hub).await;
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tokio::time::sleep(ROSTER_COALESCE) => {}
        }
    }
}

/// One look at presence for the roster, announcing what changed.
async fn reconcile_roster(hub: &Hub) {
    // A few reads however many are online: presence's own capped list and count, and
    // which of the people listed here are still online. When Redis cannot be asked,
    // this node's own users are not everyone online, so the list waits.
    let asked = hub.roster.listed_ids();
    let (Some(now), Some(online)) = (
        hub.presence.online_members().await,
        hub.presence.online_among(&asked).await,
    ) else {
        announce_removals_waiting(hub).await;
        return;
    };
    let changes = hub.roster.reconcile(&now, &asked, &online);
    let mut frames = Vec::new();
    for user in &changes.unlisted {
        frames.push(person_removed(user));
    }
    for user in &changes.listed {
        let html = views::person(user).into_string();
        frames.push(frame(target::PEOPLE, Swap::BeforeEnd, &html));
    }
    if let Some(more) = changes.more {
        frames.push(frame(
            target::PEOPLE_MORE,
            Swap::Inner,
            &views::people_more(more),
        ));
    }
    publish_to_all(hub, frames).await;
    hub.roster.announced();
}

/// Publishes what waits for the roster's and the rooms' next rounds. Once a stopping
/// node's sockets have closed no round follows, and other nodes' sockets would keep the
/// names of people who left with it.
pub async fn announce_what_waits(hub: &Hub) {
    announce_removals_waiting(hub).await;
    room_members::announce_room_changes_left(hub).await;
}

/// Publishes the Online list's removals that wait for a reconcile.
async fn announce_removals_waiting(hub: &Hub) {
    let gone = hub
        .roster
        .take_unannounced()
        .iter()
        .map(person_removed)
        .collect();
    publish_to_all(hub, gone).await;
    hub.roster.announced();
}

/// The frame that takes `user` off the Online list.
fn person_removed(user: &User) -> Utf8Bytes {
    frame(&target::person(&user.id), Swap::Remove, "")
}

/// Publishes the roster's changes to every socket.
async fn publish_to_all(hub: &Hub, frames: Vec<Utf8Bytes>) {
    let events = frames
        .into_iter()
        .map(|frame| (LOBBY.to_owned(), Event::All { frame }))
        .collect();
    hub.publish_all(events, "roster change").await;
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
