//! Rooms' latest pages as frames, shared by the sockets that enter a room while nothing in
//! it changes: in a reconnect storm every socket of a busy room would otherwise read the
//! same fifty messages from the store and render them again (the read alone, a hand-off
//! to SQLite's thread and back, is a third of a connect to an empty room).
//!
//! A page is kept with the stamp its room's group had before the page was read (see
//! `Registry::stamp`): any message, edit, deletion or resync delivered to the room since
//! changes the stamp, and so does the node ceasing to follow the room. A page also serves
//! for a second at most, which bounds what a change that reached the store without
//! reaching this node (a node dying between its commit and its publication) can hide from
//! sockets that enter meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;

/// How long a page serves at most.
const SERVES_FOR: Duration = Duration::from_secs(1);
/// Rooms remembered at most...
const ROOMS_KEPT: usize = 1024;
/// ...and the bytes of their frames: past either, the memory starts over (a node's busy
/// rooms come back at once, the others were not worth keeping).
const BYTES_KEPT: usize = 16 * 1024 * 1024;

/// A room's latest page as shown to an entering socket.
pub struct Page {
    /// The room's seq the page accounts for.
    pub through: i64,
    /// The messages, as the frame that shows them.
    pub frame: Utf8Bytes,
    /// The oldest message's seq, when older ones may exist (`views::older_after_page`).
    pub older: Option<i64>,
    /// How many messages, and their text's bytes: what reading them costs a user.
    pub count: usize,
    pub bytes: usize,
}

struct Kept {
    stamp: u64,
    at: Instant,
    page: Arc<Page>,
}

#[derive(Default)]
struct Rooms {
    pages: HashMap<String, Kept>,
    bytes: usize,
}

#[derive(Default)]
pub struct Pages {
    rooms: Mutex<Rooms>,
}

impl Pages {
    /// `room`'s page, when one was kept under `stamp` less than `SERVES_FOR` ago.
    pub fn get(&self, room: &str, stamp: u64) -> Option<Arc<Page>> {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms
            .pages
            .get(room)
            .filter(|kept| kept.stamp == stamp && kept.at.elapsed() < SERVES_FOR)
            .map(|kept| kept.page.clone())
    }

    /// Keeps `page` of `room`, read after the room's group had `stamp`.
    pub fn keep(&self, room: &str, stamp: u64, page: Arc<Page>) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let size = page.frame.len();
        if let Some(old) = rooms.pages.remove(room) {
            rooms.bytes -= old.page.frame.len();
        }
        if rooms.pages.len() >= ROOMS_KEPT || rooms.bytes + size > BYTES_KEPT {
            *rooms = Rooms::default();
        }
        rooms.bytes += size;
        rooms.pages.insert(
            room.to_owned(),
            Kept {
                stamp,
                at: Instant::now(),
                page,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(text: &str) -> Arc<Page> {
        Arc::new(Page {
            through: 1,
            frame: Utf8Bytes::from(text.to_owned()),
            older: None,
            count: 1,
            bytes: text.len(),
        })
    }

    #[test]
    fn a_page_serves_only_under_the_stamp_it_was_kept_with() {
        let pages = Pages::default();
        assert!(pages.get("r", 1).is_none());
        pages.keep("r", 1, page("one"));
        assert_eq!(
            pages.get("r", 1).map(|p| p.frame.to_string()).as_deref(),
            Some("one")
        );
        assert!(pages.get("r", 2).is_none());
        assert!(pages.get("s", 1).is_none());
        pages.keep("r", 2, page("two"));
        assert!(pages.get("r", 1).is_none());
        assert_eq!(
            pages.get("r", 2).map(|p| p.frame.to_string()).as_deref(),
            Some("two")
        );
    }

    #[test]
    fn pages_past_the_bytes_kept_start_the_memory_over() {
        let pages = Pages::default();
        let big = "x".repeat(BYTES_KEPT / 2 + 1);
        pages.keep("r", 1, page(&big));
        pages.keep("r", 1, page(&big));
        assert!(
            pages.get("r", 1).is_some(),
            "a page replacing itself is not counted twice"
        );
        pages.keep("s", 1, page(&big));
        assert!(pages.get("r", 1).is_none());
        assert!(pages.get("s", 1).is_some());
    }
}
