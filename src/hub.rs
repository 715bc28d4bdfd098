//! What every socket on this node shares: storage, the channel layer, presence, limits,
//! and the shutdown signal.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::chat::presence::{Change, Presence};
use crate::chat::protocol::{Swap, frame};
use crate::chat::rate::RateLimiter;
use crate::layer::{ChannelLayer, Event, LOBBY, room_group};
use crate::store::Store;
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
}

/// The group that sees a presence change, and the event that shows it there.
pub fn presence_event(change: &Change) -> (String, Event) {
    match change {
        Change::Online(user) => (
            LOBBY.to_owned(),
            Event::All {
                frame: frame(
                    "#people",
                    Swap::BeforeEnd,
                    &views::person(user).into_string(),
                ),
            },
        ),
        Change::Offline(user) => (
            LOBBY.to_owned(),
            Event::All {
                frame: frame(&format!("#person-{}", user.id), Swap::Remove, ""),
            },
        ),
        Change::Entered { room, user } => (
            room_group(room),
            Event::Viewers {
                room: Arc::from(room.as_str()),
                frame: frame(
                    "#room-members",
                    Swap::BeforeEnd,
                    &views::member(user).into_string(),
                ),
            },
        ),
        Change::Left { room, user } => (
            room_group(room),
            Event::Viewers {
                room: Arc::from(room.as_str()),
                frame: frame(&format!("#member-{}", user.id), Swap::Remove, ""),
            },
        ),
    }
}

/// Runs presence upkeep every `every` until the node shuts down, announcing what it finds:
/// users whose node died without saying goodbye, and entries written back after an outage.
pub async fn maintain_presence(hub: Arc<Hub>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for change in hub.presence.maintain().await {
            tracing::debug!(?change, "presence changed without its socket saying so");
            let (group, event) = presence_event(&change);
            if let Err(e) = hub.layer.publish(&group, event).await {
                tracing::warn!(error = %e, group, "presence change not published");
            }
        }
    }
}
