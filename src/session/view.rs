//! The socket's view, owned by its writer: which room is active, what of it is on screen,
//! unread counts, and what waits for a room being entered. A pure state machine: each item
//! the socket's queue delivers becomes the frames that go on the wire.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use axum::extract::ws::Utf8Bytes;

use super::messages_frame;
use crate::chat::protocol::{Swap, frame};
use crate::hub::Hub;
use crate::layer::outbox::Stop;
use crate::layer::{Event, Subscriber, room_group};
use crate::layer::{Outbound, Reply};
use crate::model::StoredMessage;
use crate::views;

/// The socket's view, owned by its writer.
#[derive(Default)]
pub(super) struct View {
    active: Option<Arc<str>>,
    /// Every message of the active room up to this seq has been shown.
    shown_through: i64,
    /// Seqs above `shown_through` already shown (messages from one node can overtake
    /// another's); with it, nothing is shown twice and a resync knows where the hole is.
    shown_above: BTreeSet<i64>,
    unread: HashMap<String, i64>,
    /// Set by `Event::Resync`; the writer then reads what was missed from the store.
    pub(super) resync: bool,
    /// The room being entered and what arrived for it before its history and list did.
    entering: Option<(Arc<str>, Vec<Held>)>,
    /// Rooms hidden from the sidebar, with the entry that puts each back when a message
    /// comes.
    hidden: HashMap<Arc<str>, Utf8Bytes>,
    /// Rooms the socket may no longer post in, shared with its reader.
    revoked: Arc<Revoked>,
    /// The digest of the socket's session, to know when it ends.
    session: Arc<str>,
    /// Set when the socket's session ended: the writer then closes it.
    pub(super) ended: bool,
    /// Set when the client closed the socket: the writer answers and stops.
    pub(super) goodbye: bool,
}

/// Rooms a socket may no longer post in: groups the user left (on any socket) and
/// conversations closed by a block. The writer keeps it as events say so; the reader
/// reads it before posting.
#[derive(Default)]
pub(super) struct Revoked {
    rooms: Mutex<HashSet<Arc<str>>>,
    added: Notify,
}

impl Revoked {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Arc<str>>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves once a room was added since the last time it did.
    pub(super) async fn changed(&self) {
        self.added.notified().await
    }

    pub(super) fn contains(&self, room: &str) -> bool {
        self.lock().contains(room)
    }

    pub(super) fn insert(&self, room: Arc<str>) {
        self.lock().insert(room);
        self.added.notify_one();
    }

    pub(super) fn remove(&self, room: &str) {
        self.lock().remove(room);
    }
}

/// Waiting for its room's history and member list to be shown first.
enum Held {
    /// A message, by seq.
    Message(i64, Utf8Bytes),
    /// A change of the member list.
    Viewers(Utf8Bytes),
}

impl View {
    pub(super) fn new(revoked: Arc<Revoked>, session: Arc<str>) -> View {
        View {
            revoked,
            session,
            ..View::default()
        }
    }

    /// The frames `outbound` puts on the wire for this socket, in order.
    pub(super) fn frames(
        &mut self,
        outbound: Outbound,
        hub: &Hub,
        member: &Subscriber,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let reply = match outbound {
            Outbound::Event(event) => return self.event(&event, hub, member, out),
            Outbound::Reply(reply) => *reply,
        };
        match reply {
            Reply::Frame(f) => out.push(f),
            Reply::Frames(frames) => out.extend(frames),
            Reply::NoRoom(frames) => {
                out.extend(frames);
                self.active = None;
                self.entering = None;
            }
            Reply::Rooms { unread, hidden } => {
                self.unread = unread;
                self.hidden = hidden;
            }
            Reply::Entering { room } => self.entering = Some((room, Vec::new())),
            Reply::NotEntered { room } => {
                if self.entering.as_ref().is_some_and(|(r, _)| *r == room) {
                    self.entering = None;
                }
            }
            Reply::Enter {
                room,
                floor,
                frames,
                catching_up,
            } => {
                out.extend(frames);
                self.unread.insert(room.to_string(), 0);
                self.shown_through = floor;
                self.shown_above.clear();
                let held = match self.entering.take() {
                    Some((entering, held)) if entering == room => held,
                    _ => Vec::new(),
                };
                self.active = Some(room.clone());
                if catching_up {
                    self.entering = Some((room, held));
                } else {
                    self.release(held, out);
                }
            }
            Reply::Goodbye => self.goodbye = true,
            Reply::CaughtUp { room } => {
                if let Some((entering, held)) = self.entering.take() {
                    if entering == room {
                        self.release(held, out);
                    } else {
                        self.entering = Some((entering, held));
                    }
                }
            }
            Reply::Missed { room, messages } => {
                if self.active.as_ref() == Some(&room) {
                    self.show_missed(messages, out);
                }
            }
        }
    }

    /// The frames a published event puts on the wire for this socket.
    fn event(&mut self, event: &Event, hub: &Hub, member: &Subscriber, out: &mut Vec<Utf8Bytes>) {
        match event {
            Event::Message {
                room,
                seq,
                frame: f,
            } => {
                if let Some(held) = self.held_for(room) {
                    held.push(Held::Message(*seq, f.clone()));
                    // A client that reads its backlog slower than the room talks falls
                    // behind as surely as one with a full queue.
                    if held.len() >= hub.limits.outbound_queue {
                        member.outbox.stop(Stop::Lagging);
                    }
                } else if self.active.as_ref() == Some(room) {
                    self.show(*seq, f.clone(), out);
                } else {
                    if let Some(entry) = self.hidden.remove(room) {
                        out.push(entry);
                    }
                    let count = self.unread.entry(room.to_string()).or_insert(0);
                    *count += 1;
                    out.push(frame(
                        &format!("#unread-{room}"),
                        Swap::Inner,
                        &views::badge_count(*count),
                    ));
                }
            }
            Event::Viewers { room, frame: f } => {
                if let Some(held) = self.held_for(room) {
                    held.push(Held::Viewers(f.clone()));
                } else if self.active.as_ref() == Some(room) {
                    out.push(f.clone());
                }
            }
            Event::All { frame: f } => out.push(f.clone()),
            Event::Resync => self.resync = true,
            Event::RoomAdded { room, frame: f } => {
                // Registered now; confirmation is not awaited, as the room is new.
                drop(hub.layer.join(&room_group(room), member));
                self.unread.entry(room.to_string()).or_insert(0);
                self.revoked.remove(room);
                self.hidden.remove(room);
                out.push(f.clone());
            }
            Event::RoomRemoved { room } => {
                hub.layer.leave(&room_group(room), member.id);
                self.revoked.insert(room.clone());
                self.hidden.remove(room);
                self.unread.remove(&**room);
                out.push(frame(&format!("#room-{room}"), Swap::Remove, ""));
            }
            Event::RoomHidden { room, frame: entry } => {
                self.hidden.insert(room.clone(), entry.clone());
                out.push(frame(&format!("#room-{room}"), Swap::Remove, ""));
            }
            Event::SessionEnded { session } => self.ended |= **session == *self.session,
        }
    }
}

impl View {
    /// Shows what was held while entering, in the order it came.
    fn release(&mut self, held: Vec<Held>, out: &mut Vec<Utf8Bytes>) {
        for held in held {
            match held {
                Held::Message(seq, f) => self.show(seq, f, out),
                Held::Viewers(f) => out.push(f),
            }
        }
    }

    /// While `room` is being entered, where its events wait for its history and list.
    fn held_for(&mut self, room: &str) -> Option<&mut Vec<Held>> {
        self.entering
            .as_mut()
            .filter(|(entering, _)| **entering == *room)
            .map(|(_, held)| held)
    }

    /// Records `seq` as shown; false when it already was.
    fn mark_shown(&mut self, seq: i64) -> bool {
        // The usual case, the next seq with no gap before it, touches no set: a set's first
        // entry allocates, and this runs for every message to every socket.
        if seq == self.shown_through + 1 && self.shown_above.is_empty() {
            self.shown_through = seq;
            return true;
        }
        if seq <= self.shown_through || !self.shown_above.insert(seq) {
            return false;
        }
        while self.shown_above.remove(&(self.shown_through + 1)) {
            self.shown_through += 1;
        }
        true
    }

    /// Shows a live message of the active room unless it is already on screen.
    fn show(&mut self, seq: i64, frame: Utf8Bytes, out: &mut Vec<Utf8Bytes>) {
        if self.mark_shown(seq) {
            out.push(frame);
        }
    }

    /// Shows the messages from a store read that are not on screen yet, in frames of a
    /// history page's size so no frame grows past what a client takes in one piece.
    fn show_missed(&mut self, messages: Vec<StoredMessage>, out: &mut Vec<Utf8Bytes>) {
        let fresh: Vec<StoredMessage> = messages
            .into_iter()
            .filter(|m| self.mark_shown(m.seq))
            .collect();
        for chunk in fresh.chunks(views::PAGE_SIZE as usize) {
            out.push(messages_frame(chunk, Swap::BeforeEnd));
        }
    }

    /// After a gap in delivery: what is not shown yet from the first hole on, up to the
    /// catch-up limit. Further behind, the page finds the gap after these and asks to
    /// `Catch up`, which shows the room afresh.
    pub(super) async fn missed_frames(&mut self, hub: &Hub, out: &mut Vec<Utf8Bytes>) {
        let Some(room) = self.active.clone() else {
            return;
        };
        let limit = hub.limits.catch_up_limit;
        match hub
            .store
            .messages_after(&room, self.shown_through, limit)
            .await
        {
            Ok(page) => self.show_missed(page, out),
            Err(e) => tracing::warn!(error = %e, "could not fetch missed messages"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::View;

    #[test]
    fn each_seq_is_shown_once_whatever_the_order() {
        let mut view = View::default();
        assert!(view.mark_shown(1));
        assert!(!view.mark_shown(1));
        // 3 overtakes 2: shown, and 2 is still awaited.
        assert!(view.mark_shown(3));
        assert_eq!(view.shown_through, 1);
        assert!(view.mark_shown(2));
        assert_eq!(view.shown_through, 3);
        assert!(view.shown_above.is_empty());
        assert!(!view.mark_shown(2) && !view.mark_shown(3));
        assert!(view.mark_shown(4));
    }
}
