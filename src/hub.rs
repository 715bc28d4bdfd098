//! What every socket on this node shares: storage, the channel layer, presence, limits,
//! and the shutdown signal.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::chat::presence::Presence;
use crate::chat::rate::RateLimiter;
use crate::layer::ChannelLayer;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest message text, in characters.
    pub max_message_chars: usize,
    /// Frames a socket may have waiting before it counts as too slow and is closed.
    pub outbound_queue: usize,
    /// Largest WebSocket message accepted at all; larger ones close the socket.
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_chars: 4000,
            outbound_queue: 1024,
            max_frame_bytes: 64 * 1024,
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
