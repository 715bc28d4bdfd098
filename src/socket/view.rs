//! The socket's view, owned by its writer: which room is active, what of it is on screen,
//! unread counts, and what waits for a room being entered. A pure state machine: each item
//! the socket's queue delivers becomes the frames that go on the wire, and the effects the
//! writer then carries out (following a group, leaving one, giving up on a client).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use axum::extract::ws::Utf8Bytes;

use super::messages_frame;
use crate::chat::protocol::{Swap, frame};
use crate::layer::{Event, Outbound, Reply};
use crate::model::StoredMessage;
use crate::views::{self, target};

/// What the writer does for the view, beyond writing frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Effect {
    /// Follow this room's group (a room added).
    Join(Arc<str>),
    /// Stop following it (a room taken away).
    Leave(Arc<str>),
    /// The client falls behind: cut it off.
    Lagging,
}

/// The socket's view, owned by its writer.
#[derive(Default)]
pub(super) struct View {
    active: Option<Arc<str>>,
    /// Every message of the active room up to this seq has been shown.
    shown_through: i64,
    /// Seqs above `shown_through` already shown (messages from one node can overtake
    /// another's); with it, nothing is shown twice and a resync knows where the hole is.
    shown_above: BTreeSet<i64>,
    /// By room not shown: messages unread, and of those, the ones that mention the user.
    /// Only rooms with some: a room not here has none.
    unread: HashMap<String, (i64, i64)>,
    /// How a message's frame marks a mention of the user (see `views::format`).
    mention_mark: Box<str>,
    /// Set by `Event::Resync`; the writer then reads what was missed from the store
    /// (`take_resync`).
    resync: bool,
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
    /// Messages held for a room being entered, at most, before the client is cut off.
    hold_at_most: usize,
    /// What the writer is to do, in order; it takes them after each batch.
    effects: Vec<Effect>,
}

/// Rooms a socket may no longer post in: groups the user left (on any socket) and
/// conversations closed by a block. The writer keeps it as events say so; the reader
/// reads it before posting, and waits on it to move on from a room taken away.
#[derive(Default)]
pub(super) struct Revoked {
    rooms: Mutex<HashSet<Arc<str>>>,
    /// A room was added since the reader last looked (see `poll_added`).
    added: AtomicBool,
    /// The reader, while it waits.
    reader: AtomicWaker,
}

impl Revoked {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Arc<str>>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ready once a room was added since the last time it was; polled by hand, so that the
    /// reader's wait holds nothing of its own (a `Notify`'s wait is 80 bytes in every
    /// socket's task).
    pub(super) fn poll_added(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.added.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.reader.register(cx.waker());
        // A room added between the look above and the registration woke no one.
        if self.added.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    pub(super) fn contains(&self, room: &str) -> bool {
        self.lock().contains(room)
    }

    pub(super) fn insert(&self, room: Arc<str>) {
        self.lock().insert(room);
        self.added.store(true, Ordering::Release);
        self.reader.wake();
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
    pub(super) fn new(
        revoked: Arc<Revoked>,
        session: Arc<str>,
        user_id: &str,
        hold_at_most: usize,
    ) -> View {
        View {
            // As the attribute reads inside a frame's JSON: a message's text cannot make it
            // (its quotes are escaped as `&quot;` before the JSON escapes them).
            mention_mark: format!("data-mention=\\\"{user_id}\\\"").into(),
            revoked,
            session,
            hold_at_most,
            ..View::default()
        }
    }

    /// What the writer is to do since it last asked.
    pub(super) fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// The room shown, and the seq through which everything in it is shown.
    pub(super) fn shown(&self) -> Option<(Arc<str>, i64)> {
        self.active.clone().map(|room| (room, self.shown_through))
    }

    /// Whether to read now what a gap in delivery hid: once after `Event::Resync`, and not
    /// while a room is being entered. Until its history is on screen, `shown` names the
    /// room before it, and what the gap hid in the room entered is read from where its
    /// history ends, once it does.
    pub(super) fn take_resync(&mut self) -> bool {
        if self.resync && self.entering.is_none() {
            self.resync = false;
            return true;
        }
        false
    }

    /// The frames `outbound` puts on the wire for this socket, in order.
    pub(super) fn frames(&mut self, outbound: Outbound, out: &mut Vec<Utf8Bytes>) {
        let reply = match outbound {
            Outbound::Event(event) => return self.event(&event, out),
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
                self.unread.remove(&*room);
                if self.unread.is_empty() {
                    // Nothing unread any more: give the table back.
                    self.unread.shrink_to_fit();
                }
                self.shown_through = floor;
                self.shown_above.clear();
                out.push(room_seq_frame(floor));
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
            Reply::Missed {
                room,
                messages,
                through,
            } => {
                if self.active.as_ref() == Some(&room) {
                    self.show_missed(messages, through, out);
                }
            }
        }
    }

    /// The frames a published event puts on the wire for this socket.
    fn event(&mut self, event: &Event, out: &mut Vec<Utf8Bytes>) {
        match event {
            Event::Message {
                room,
                seq,
                frame: f,
            } => {
                // A message brings a hidden conversation back, even to the socket that
                // still shows it because the hide has not moved it on yet. Most sockets
                // hide nothing, and this runs for every message to every socket: an empty
                // map is not asked (asking hashes the key).
                if !self.hidden.is_empty()
                    && let Some(entry) = self.hidden.remove(room)
                {
                    out.push(entry);
                }
                if !self.show_in_room(room, *seq, f, out) {
                    let (count, mentions) = self.unread.entry(room.to_string()).or_insert((0, 0));
                    *count += 1;
                    out.push(frame(
                        &target::unread(room),
                        Swap::Inner,
                        &views::badge_count(*count),
                    ));
                    if f.as_str().contains(&*self.mention_mark) {
                        *mentions += 1;
                        out.push(frame(
                            &target::mentions(room),
                            Swap::Inner,
                            &views::mention_count(*mentions),
                        ));
                    }
                }
            }
            // An edit or a deletion: shown where the room is, counted nowhere else.
            Event::Changed {
                room,
                seq,
                frame: f,
            } => {
                self.show_in_room(room, *seq, f, out);
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
                self.effects.push(Effect::Join(room.clone()));
                self.revoked.remove(room);
                self.hidden.remove(room);
                out.push(f.clone());
            }
            Event::RoomRemoved { room } => {
                self.effects.push(Effect::Leave(room.clone()));
                self.revoked.insert(room.clone());
                self.hidden.remove(room);
                self.unread.remove(&**room);
                out.push(frame(&target::room_entry(room), Swap::Remove, ""));
            }
            Event::RoomHidden { room, frame: entry } => {
                self.hidden.insert(room.clone(), entry.clone());
                out.push(frame(&target::room_entry(room), Swap::Remove, ""));
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

    /// Shows change `seq` of `room` (a message, an edit, a deletion) where the room is
    /// shown, or holds it while the room is being entered; false when the socket shows
    /// another room.
    fn show_in_room(
        &mut self,
        room: &str,
        seq: i64,
        f: &Utf8Bytes,
        out: &mut Vec<Utf8Bytes>,
    ) -> bool {
        if let Some(held) = self.held_for(room) {
            held.push(Held::Message(seq, f.clone()));
            // A client that reads its backlog slower than the room talks falls behind as
            // surely as one with a full queue.
            if held.len() >= self.hold_at_most {
                self.effects.push(Effect::Lagging);
            }
        } else if self.active.as_deref() == Some(room) {
            self.show(seq, f.clone(), out);
        } else {
            return false;
        }
        true
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
        self.close_up();
        true
    }

    /// Moves `shown_through` over the seqs shown above it that follow on without a gap.
    fn close_up(&mut self) {
        while self.shown_above.remove(&(self.shown_through + 1)) {
            self.shown_through += 1;
        }
    }

    /// Shows a live message of the active room unless it is already on screen.
    fn show(&mut self, seq: i64, frame: Utf8Bytes, out: &mut Vec<Utf8Bytes>) {
        if self.mark_shown(seq) {
            out.push(frame);
        }
    }

    /// Shows the messages from a store read that are not on screen yet (new ones), and
    /// changed ones in their current state, in frames of a history page's size so no
    /// frame grows past what a client takes in one piece; then everything through
    /// `through` counts as shown, and the client is told so.
    pub(super) fn show_missed(
        &mut self,
        messages: Vec<StoredMessage>,
        through: i64,
        out: &mut Vec<Utf8Bytes>,
    ) {
        // A changed message goes again even when its change was shown live: the client may
        // have had no article to apply it to (the message's own frame lost on the way), and
        // it keeps only the newest state of an article.
        let fresh: Vec<StoredMessage> = messages
            .into_iter()
            .filter(|m| self.mark_shown(m.rev) || m.rev != m.seq)
            .collect();
        for chunk in fresh.chunks(views::PAGE_SIZE as usize) {
            out.push(messages_frame(chunk, Swap::BeforeEnd));
        }
        if through > self.shown_through {
            self.shown_through = through;
            self.shown_above = self.shown_above.split_off(&(through + 1));
            self.close_up();
        }
        out.push(room_seq_frame(self.shown_through));
    }
}

/// Tells the client that every change of the room it shows through `seq` is on its page:
/// a change replaced by a later one leaves a seq no frame carries, and the client's search
/// for gaps starts after this.
fn room_seq_frame(seq: i64) -> Utf8Bytes {
    frame(target::ROOM_SEQ, Swap::Inner, &seq.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View {
        View::new(Arc::default(), Arc::from("my-session"), "me", 4)
    }

    fn message(room: &str, seq: i64) -> Outbound {
        Outbound::Event(Arc::new(Event::Message {
            room: Arc::from(room),
            seq,
            frame: Utf8Bytes::from(format!("{room}:{seq}")),
        }))
    }

    fn reply(reply: Reply) -> Outbound {
        Outbound::Reply(Box::new(reply))
    }

    fn event(event: Event) -> Outbound {
        Outbound::Event(Arc::new(event))
    }

    /// The user hid `room`: its sidebar entry is `entry of <room>`.
    fn hidden(room: &str) -> Outbound {
        event(Event::RoomHidden {
            room: Arc::from(room),
            frame: Utf8Bytes::from(format!("entry of {room}")),
        })
    }

    /// The frames a run of queue items puts on the wire, as text.
    fn run(view: &mut View, items: Vec<Outbound>) -> Vec<String> {
        let mut out = Vec::new();
        for item in items {
            view.frames(item, &mut out);
        }
        // What the client is told of the room's seq is looked at on its own (below).
        out.iter()
            .map(|f| f.as_str().to_owned())
            .filter(|f| !f.contains(target::ROOM_SEQ))
            .collect()
    }

    fn changed(room: &str, seq: i64) -> Outbound {
        Outbound::Event(Arc::new(Event::Changed {
            room: Arc::from(room),
            seq,
            frame: Utf8Bytes::from(format!("{room}:changed:{seq}")),
        }))
    }

    /// An edit or deletion is shown where its room is shown, in seq order with the room's
    /// messages, and counted as unread nowhere.
    #[test]
    fn a_change_is_shown_in_its_room_and_counted_nowhere() {
        let mut view = view();
        let shown = run(
            &mut view,
            vec![
                enter("r", 7, false),
                changed("r", 9),
                message("r", 8),
                changed("r", 9),
                changed("other", 3),
                message("other", 4),
            ],
        );
        assert_eq!(
            shown,
            [
                "history of r",
                "r:changed:9",
                "r:8",
                &frame(
                    &target::unread("other"),
                    Swap::Inner,
                    &views::badge_count(1)
                )
                .to_string()
            ]
        );
        assert_eq!(view.shown(), Some((Arc::from("r"), 9)));
    }

    /// A changed message in a store read goes to the client even when its change went out
    /// live: the client may have had no article to apply it to (its own frame lost).
    #[test]
    fn a_store_read_sends_changed_messages_again() {
        let mut view = view();
        run(&mut view, vec![enter("r", 10, false), changed("r", 11)]);
        let changed_message = StoredMessage {
            id: "m5".into(),
            room_id: "r".into(),
            seq: 5,
            author: crate::model::User {
                id: "u".into(),
                username: "ann".into(),
            },
            body: "edited".into(),
            created_at_ms: 0,
            client_id: None,
            rev: 11,
            edited_at_ms: Some(1),
            deleted: false,
            reactions: Vec::new(),
            replying_to: None,
            mentions: Vec::new(),
        };
        let mut out = Vec::new();
        view.show_missed(vec![changed_message], 11, &mut out);
        assert!(out.iter().any(|f| f.as_str().contains("msg-m5")), "{out:?}");
        assert_eq!(view.shown(), Some((Arc::from("r"), 11)));
    }

    /// A store read accounts for every change through its `through`, also those replaced
    /// by later changes that no frame carries: the view moves past them, and says so.
    #[test]
    fn a_store_read_moves_the_view_past_replaced_changes() {
        let mut view = view();
        run(&mut view, vec![enter("r", 10, false), message("r", 13)]);
        assert_eq!(view.shown(), Some((Arc::from("r"), 10)));
        let mut out = Vec::new();
        view.show_missed(Vec::new(), 12, &mut out);
        assert_eq!(view.shown(), Some((Arc::from("r"), 13)));
        assert_eq!(
            out.last().map(|f| f.as_str().to_owned()),
            Some(frame(target::ROOM_SEQ, Swap::Inner, "13").to_string())
        );
    }

    fn enter(room: &str, floor: i64, catching_up: bool) -> Outbound {
        reply(Reply::Enter {
            room: Arc::from(room),
            floor,
            frames: vec![Utf8Bytes::from(format!("history of {room}"))],
            catching_up,
        })
    }

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

    #[test]
    fn what_arrives_while_entering_waits_for_the_history_and_what_it_holds_is_dropped() {
        let mut view = view();
        let viewers = event(Event::Viewers {
            room: Arc::from("r"),
            frame: Utf8Bytes::from("ann is here"),
        });
        let shown = run(
            &mut view,
            vec![
                reply(Reply::Entering {
                    room: Arc::from("r"),
                }),
                message("r", 7),
                viewers,
                message("r", 8),
                enter("r", 7, false),
                message("r", 9),
            ],
        );
        assert_eq!(shown, ["history of r", "ann is here", "r:8", "r:9"]);
    }

    #[test]
    fn a_gap_found_while_entering_is_read_once_the_room_is_shown() {
        let mut view = view();
        run(&mut view, vec![enter("q", 3, false), event(Event::Resync)]);
        assert!(view.take_resync());
        assert!(!view.take_resync(), "once");
        run(
            &mut view,
            vec![
                reply(Reply::Entering {
                    room: Arc::from("r"),
                }),
                event(Event::Resync),
            ],
        );
        assert!(!view.take_resync(), "not from the room before");
        run(&mut view, vec![enter("r", 7, true)]);
        assert!(!view.take_resync(), "not before the catch-up is shown");
        run(
            &mut view,
            vec![reply(Reply::CaughtUp {
                room: Arc::from("r"),
            })],
        );
        assert!(view.take_resync());
        assert_eq!(view.shown(), Some((Arc::from("r"), 7)));
    }

    #[test]
    fn a_resume_shows_its_backlog_before_anything_live() {
        let mut view = view();
        let missed = |seqs: std::ops::RangeInclusive<i64>| {
            reply(Reply::Missed {
                room: Arc::from("r"),
                through: *seqs.end(),
                messages: seqs
                    .map(|seq| StoredMessage {
                        id: format!("m{seq}"),
                        room_id: "r".into(),
                        seq,
                        author: crate::model::User {
                            id: "u".into(),
                            username: "ann".into(),
                        },
                        body: format!("body {seq}"),
                        created_at_ms: 0,
                        client_id: None,
                        rev: seq,
                        edited_at_ms: None,
                        deleted: false,
                        reactions: Vec::new(),
                        replying_to: None,
                        mentions: Vec::new(),
                    })
                    .collect(),
            })
        };
        let shown = run(
            &mut view,
            vec![
                reply(Reply::Entering {
                    room: Arc::from("r"),
                }),
                message("r", 6),
                enter("r", 3, true),
                message("r", 7),
                missed(4..=6),
                reply(Reply::CaughtUp {
                    room: Arc::from("r"),
                }),
                message("r", 8),
            ],
        );
        assert_eq!(shown.len(), 4, "{shown:?}");
        assert_eq!(shown[0], "history of r");
        // The backlog, 4 to 6, in one frame; then 7 (6 was in the backlog), then 8.
        assert!(shown[1].contains("body 4") && shown[1].contains("body 6"));
        assert_eq!(shown[2..], ["r:7", "r:8"]);
    }

    #[test]
    fn a_client_slower_than_its_room_while_catching_up_is_cut_off() {
        let mut view = view();
        run(&mut view, vec![enter("r", 0, true)]);
        assert!(view.take_effects().is_empty());
        run(&mut view, (1..=4).map(|seq| message("r", seq)).collect());
        assert_eq!(view.take_effects(), [Effect::Lagging]);
    }

    #[test]
    fn other_rooms_count_unread_and_a_hidden_one_comes_back() {
        let mut view = view();
        let shown = run(
            &mut view,
            vec![
                enter("r", 0, false),
                message("other", 1),
                message("other", 2),
                hidden("dm"),
                message("dm", 1),
                message("dm", 2),
            ],
        );
        assert_eq!(shown.len(), 7, "{shown:?}");
        assert!(shown[2].contains("#unread-other") && shown[2].contains("2<span"));
        assert!(shown[3].contains("#room-dm") && shown[3].contains("remove"));
        assert_eq!(shown[4], "entry of dm", "back before its badge");
        assert!(shown[5].contains("#unread-dm") && shown[5].contains("1<span"));
        assert!(!shown[6].contains("entry of dm"), "back once");
    }

    #[test]
    fn a_conversation_hidden_while_shown_comes_back_with_its_next_message() {
        let mut view = view();
        let shown = run(
            &mut view,
            vec![enter("dm", 0, false), hidden("dm"), message("dm", 1)],
        );
        assert_eq!(shown.len(), 4, "{shown:?}");
        assert!(shown[1].contains("#room-dm") && shown[1].contains("remove"));
        assert_eq!(shown[2..], ["entry of dm", "dm:1"]);
    }

    #[test]
    fn rooms_taken_away_are_left_and_refused_until_given_back() {
        let mut view = view();
        let revoked = view.revoked.clone();
        run(
            &mut view,
            vec![event(Event::RoomRemoved {
                room: Arc::from("g"),
            })],
        );
        assert_eq!(view.take_effects(), [Effect::Leave(Arc::from("g"))]);
        assert!(revoked.contains("g"));
        run(
            &mut view,
            vec![event(Event::RoomAdded {
                room: Arc::from("g"),
                frame: Utf8Bytes::from("entry of g"),
            })],
        );
        assert_eq!(view.take_effects(), [Effect::Join(Arc::from("g"))]);
        assert!(!revoked.contains("g"));
    }

    #[test]
    fn only_its_own_session_ending_ends_a_socket() {
        let mut view = view();
        let ended = |session: &str| {
            event(Event::SessionEnded {
                session: Arc::from(session),
            })
        };
        run(&mut view, vec![ended("another-session")]);
        assert!(!view.ended);
        run(&mut view, vec![ended("my-session")]);
        assert!(view.ended);
    }
}
