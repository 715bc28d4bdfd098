//! Rooms' latest pages as frames, shared by the sockets that enter a room while nothing in
//! it changes: in a reconnect storm every socket of a busy room would otherwise read the
//! same fifty messages from the store and render them again (the read alone, a hand-off
//! to SQLite's thread and back, is a third of a connect to an empty room).
//!
//! A page is kept with the stamp its room's group had before the page was read (see
//! `Registry::stamp`): any message, edit, deletion or resync delivered to the room since
//! changes the stamp, and so do the node ceasing to follow the room and its subscription
//! to the room's events being confirmed. A page also serves for a second at most from
//! when its read began, which bounds what a change that reached the store without
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
/// ...and the bytes of their frames: past either, pages that no longer serve are
/// forgotten, and if that is not enough, the memory starts over (a node's busy rooms come
/// back at once, the others were not worth keeping).
const BYTES_KEPT: usize = 16 * 1024 * 1024;
/// A page larger than this is not kept: a few of the largest pages (fifty of the longest
/// messages) would otherwise push every other room out.
const PAGE_KEPT: usize = BYTES_KEPT / 64;

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

    /// Keeps `page` of `room`, read from `since` on, after the room's group had `stamp`:
    /// it serves for `SERVES_FOR` from the moment its read began.
    pub fn keep(&self, room: &str, stamp: u64, since: Instant, page: Arc<Page>) {
        let size = page.frame.len();
        if size > PAGE_KEPT {
            return;
        }
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = rooms.pages.remove(room) {
            rooms.bytes -= old.page.frame.len();
        }
        let full =
            |rooms: &Rooms| rooms.pages.len() >= ROOMS_KEPT || rooms.bytes + size > BYTES_KEPT;
        if full(&rooms) {
            let mut freed = 0;
            rooms.pages.retain(|_, kept| {
                let serves = kept.at.elapsed() < SERVES_FOR;
                if !serves {
                    freed += kept.page.frame.len();
                }
                serves
            });
            rooms.bytes -= freed;
            if full(&rooms) {
                *rooms = Rooms::default();
            }
        }
        rooms.bytes += size;
        rooms.pages.insert(
            room.to_owned(),
            Kept {
                stamp,
                at: since,
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

    fn text(pages: &Pages, room: &str, stamp: u64) -> Option<String> {
        pages.get(room, stamp).map(|p| p.frame.to_string())
    }

    #[test]
    fn a_page_serves_only_under_the_stamp_it_was_kept_with() {
        let pages = Pages::default();
        assert!(pages.get("r", 1).is_none());
        pages.keep("r", 1, Instant::now(), page("one"));
        assert_eq!(text(&pages, "r", 1).as_deref(), Some("one"));
        assert!(pages.get("r", 2).is_none());
        assert!(pages.get("s", 1).is_none());
        pages.keep("r", 2, Instant::now(), page("two"));
        assert!(pages.get("r", 1).is_none());
        assert_eq!(text(&pages, "r", 2).as_deref(), Some("two"));
    }

    #[test]
    fn a_page_serves_for_a_while_from_when_its_read_began() {
        let pages = Pages::default();
        pages.keep("r", 1, Instant::now() - SERVES_FOR, page("one"));
        assert!(pages.get("r", 1).is_none());
    }

    #[test]
    fn a_full_memory_forgets_what_no_longer_serves_first() {
        let pages = Pages::default();
        let big = "x".repeat(PAGE_KEPT);
        let fill = BYTES_KEPT / PAGE_KEPT;
        let long_ago = Instant::now() - SERVES_FOR;
        pages.keep("r0", 1, Instant::now(), page(&big));
        for n in 1..fill {
            pages.keep(&format!("r{n}"), 1, long_ago, page(&big));
        }
        pages.keep("r0", 1, Instant::now(), page(&big));
        assert!(
            pages.get("r0", 1).is_some(),
            "a page replacing itself is not counted twice"
        );
        // Full: the pages that no longer serve make room; the one that does stays.
        pages.keep("s", 1, Instant::now(), page(&big));
        assert!(pages.get("r0", 1).is_some() && pages.get("s", 1).is_some());
        // Full of pages that serve: the memory starts over.
        for n in 0..fill {
            pages.keep(&format!("t{n}"), 1, Instant::now(), page(&big));
        }
        assert!(pages.get("r0", 1).is_none());
        assert!(pages.get(&format!("t{}", fill - 1), 1).is_some());
        // A page too large is not kept at all.
        pages.keep("u", 1, Instant::now(), page(&"x".repeat(PAGE_KEPT + 1)));
        assert!(pages.get("u", 1).is_none());
    }
}
