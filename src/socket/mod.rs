//! One chat socket: a reader that turns client actions into store writes and publications,
//! and a writer that drains the socket's bounded queue onto the wire.
//!
//! The writer owns the socket's view (which room is active, unread counts) so that it can
//! decide per event, in queue order, whether to show a message or bump a badge. The reader
//! changes rooms by queueing a `Reply::Enter`, which carries the new room's fragments and
//! the newest seq they contain: live messages up to that seq are already on screen and are
//! dropped, so switching rooms neither loses nor repeats a message. The writer records
//! which seqs it has shown, so catch-up reads and resyncs after a delivery gap add only
//! what is missing.
//!
//! Here: starting and serving a socket, and what its halves share. The reader's actions
//! are in `actions`, its posts (queued while the ones before are stored) in `posting`,
//! edits and deletions in `changes`, the rooms it shows (entering, leaving, catching up)
//! in `rooms`, the rooms a person chooses in `membership`; the writer is `writer`, its
//! state `view`; the connection both halves use is `connection`.

use std::future::poll_fn;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::chat::names::InputError;
use crate::chat::protocol::{Swap, frame};
use crate::hub::Hub;
use crate::layer::{Outbound, Reply, Subscriber};
use crate::model::{Room, RoomSummary, StoredMessage, User};
use crate::store::{SignedIn, StoreError};
use crate::views::{self, target};

mod actions;
mod changes;
mod connection;
mod membership;
mod posting;
mod rooms;
mod search;
mod view;
mod writer;

pub use connection::Connection;
use connection::Incoming;
use posting::InFlight;
use view::Revoked;
use writer::{Backlog, write_loop};

/// Who a socket is for, beyond the user: where the client connects from, and a digest of
/// its session (see `Event::SessionEnded`).
#[derive(Debug, Clone)]
pub struct Client {
    pub address: IpAddr,
    pub session: Arc<str>,
}

/// Where a reconnecting client left off.
#[derive(Debug, Default, Clone)]
pub struct Resume {
    pub room: Option<String>,
    pub after_seq: Option<i64>,
    /// The room the page's address names (`/r/<group>`, `/dm/<user>`), when it is not
    /// resuming one.
    pub named: Option<Named>,
}

/// A room by the name a link gives it.
#[derive(Debug, Clone)]
pub enum Named {
    Group(String),
    Direct(String),
}

/// How a socket's reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The client sent a close frame.
    ByClient,
    /// The connection broke, or the socket could not start.
    Broken,
}

/// How long a socket's writer has to answer a client's close.
const GOODBYE: Duration = Duration::from_secs(2);

/// WebSocket close codes the client acts on.
pub mod close_code {
    /// The client closed the socket, and this is the answer.
    pub const NORMAL: u16 = 1000;
    /// The server is going away; reconnect (to another node) and catch up.
    pub const RESTARTING: u16 = 1012;
    /// The socket fell behind its queue; reconnect and catch up.
    pub const TRY_AGAIN: u16 = 1013;
    /// The socket's session ended (logged out, on any tab or node): sign in again.
    pub const LOGGED_OUT: u16 = 4001;
}

/// Serves one chat socket until it closes.
///
/// Not an `async fn`, and the socket's state is made before its future: an async fn keeps
/// room for its arguments for as long as it runs, beside the copies its body moves them
/// into; the async block below works on what it captured in place.
pub fn run(
    hub: Arc<Hub>,
    signed_in: SignedIn,
    client: Client,
    connection: Connection,
    resume: Resume,
) -> impl Future<Output = ()> + Send + 'static {
    let (stream, sink) = connection.split(hub.limits.max_frame_bytes);
    let SignedIn {
        user,
        rooms,
        groups,
    } = signed_in;
    // Boxed for the same reason: needed only to start, it would otherwise keep its room.
    let opening = Box::new(Opening {
        rooms,
        groups,
        resume,
    });
    let member = Subscriber::new(
        hub.layer.registry().next_socket_id(),
        hub.limits.outbound_queue,
    );
    let backlog = Arc::new(Backlog::default());
    let revoked = Arc::new(Revoked::default());
    let mut writer = tokio::spawn(write_loop(
        hub.clone(),
        member.clone(),
        backlog.clone(),
        revoked.clone(),
        client.session,
        &user.id,
        sink,
    ));
    let mut socket = Socket {
        hub,
        user,
        member,
        backlog,
        revoked,
        address: client.address,
        active: None,
        last_typing: None,
        peers: Vec::new(),
    };
    async move {
        tracing::debug!(user = %socket.user.username, socket = socket.member.id, "socket open");
        let ended = {
            let reader = async {
                // Boxed, like each action below: an idle socket's task then holds only the
                // small read loop, not the state of the largest action it might run.
                let started = match Box::pin(socket.start(opening)).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(error = %e, "could not start the chat socket");
                        false
                    }
                };
                // Not read inside that match: its result would keep its room beside the loop.
                if started {
                    socket.read_loop(stream).await
                } else {
                    Ended::Broken
                }
            };
            tokio::select! {
                _ = &mut writer => None,
                ended = reader => Some(ended),
            }
        };
        if ended == Some(Ended::ByClient) {
            // The writer answers the client's close, as RFC 6455 asks, and ends. Waited for
            // once the reader is gone, so that the wait's timer takes no room beside it.
            let _ = tokio::time::timeout(GOODBYE, &mut writer).await;
        }
        writer.abort();
        // Whatever the registry still queues for this socket until it leaves is dropped.
        socket.member.outbox.close();
        // Boxed: its store writes are large futures, and inline they would sit in every
        // idle socket's task for the whole life of the connection.
        Box::pin(socket.finish()).await;
    }
}

/// What wakes a socket's read loop.
enum Next {
    /// The client sent something, or the connection ended or broke (`None`).
    Read(Option<Message>),
    /// A room was taken away (see `Revoked`).
    Revoked,
}

/// What a socket starts from: the rooms read with its session, and where it was before.
struct Opening {
    rooms: Vec<RoomSummary>,
    groups: Vec<Room>,
    resume: Resume,
}

struct ActiveRoom {
    room: Room,
    group: String,
    /// The other person, for a private room.
    peer: Option<User>,
}

/// A room about to become the active one, and how to show it.
struct Entry {
    room: Room,
    /// The other person, for a private room.
    peer: Option<User>,
    /// When resuming: the newest seq the client holds, so only what it missed is sent.
    resume_after: Option<i64>,
    /// Whether to record the room as read (a write, skipped when nothing is unread).
    mark_read: bool,
}

impl Entry {
    fn group(room: Room, mark_read: bool) -> Entry {
        Entry {
            room,
            peer: None,
            resume_after: None,
            mark_read,
        }
    }
}

struct Socket {
    hub: Arc<Hub>,
    user: User,
    member: Subscriber,
    backlog: Arc<Backlog>,
    revoked: Arc<Revoked>,
    /// Where the client connects from.
    address: IpAddr,
    active: Option<ActiveRoom>,
    last_typing: Option<Instant>,
    /// Ids of the people the user has conversations with, told when the user comes or goes.
    peers: Vec<String>,
}

/// A failed action: either the user's input (shown to them) or a server fault (logged, and
/// shown as a generic apology).
enum ActionError {
    Input(InputError),
    Store(StoreError),
    /// The user blocked this person: shown with a way to unblock.
    Blocked(User),
    /// Refused for now (too fast, not stored): the same may work in a moment.
    Busy(InputError),
    /// A post with a client id was refused: said with the id, and whether to retry.
    PostRefused {
        reason: InputError,
        client_id: String,
        retry: bool,
    },
}

impl From<InputError> for ActionError {
    fn from(e: InputError) -> Self {
        ActionError::Input(e)
    }
}

impl From<StoreError> for ActionError {
    fn from(e: StoreError) -> Self {
        ActionError::Store(e)
    }
}

fn refuse<T>(text: impl Into<String>) -> Result<T, ActionError> {
    Err(ActionError::Input(InputError(text.into())))
}

impl Socket {
    /// Queues `direct` for this socket. A client that stops reading its own answers
    /// fills its queue like any slow reader and is closed; once the writer has ended, the
    /// reader ends too and nothing more is queued.
    fn send(&self, reply: Reply) {
        self.backlog.queued(writer::weight(&reply));
        self.hub
            .layer
            .registry()
            .push(&self.member, Outbound::Reply(Box::new(reply)));
    }

    fn send_error(&self, text: &str) {
        self.send(Reply::Frame(frame(
            target::ERRORS,
            Swap::Inner,
            &views::error(text).into_string(),
        )));
    }

    /// Tells the user what an action did, where errors go.
    fn send_notice(&self, text: &str) {
        self.send(Reply::Frame(frame(
            target::ERRORS,
            Swap::Inner,
            &views::notice(text).into_string(),
        )));
    }

    async fn read_loop(&mut self, mut stream: Box<Incoming>) -> Ended {
        let mut posts = InFlight::default();
        loop {
            // Polled by hand rather than with `select!`, and what comes read by reference
            // below: a select's futures and output, and a value moved out of another, keep
            // their room beside the loop's, in every socket's task.
            let next = poll_fn(|cx| {
                // The room shown was taken away on another socket (left, or closed by a
                // block): move on, as that socket did.
                if self.revoked.poll_added(cx).is_ready() {
                    return Poll::Ready(Next::Revoked);
                }
                while let Poll::Ready(answered) = posts.poll_next(cx) {
                    self.answer_post(answered);
                }
                if posts.is_full() {
                    return Poll::Pending;
                }
                // A connection that broke ends the socket as one that ended does
                // (`Ended::Broken`).
                stream
                    .poll_next_unpin(cx)
                    .map(|read| Next::Read(read.and_then(Result::ok)))
            })
            .await;
            match &next {
                Next::Revoked => {
                    self.settle(&mut posts).await;
                    if let Err(e) = Box::pin(self.step_out_of_revoked()).await {
                        tracing::warn!(error = %e, "could not move on from a room taken away");
                    }
                }
                Next::Read(None) => return Ended::Broken,
                Next::Read(Some(Message::Text(text))) => {
                    self.backlog.wait_for_room().await;
                    // Boxed: an action's state (the parsed action, the posts it waits for)
                    // would otherwise take its room in every idle socket's task.
                    Box::pin(self.handle(text.as_str(), &mut posts)).await
                }
                Next::Read(Some(Message::Binary(_))) => {
                    self.send_error("Send text frames holding JSON.")
                }
                // The last read: the writer answers the close after what is queued (see
                // `connection`).
                Next::Read(Some(Message::Close(_))) => {
                    self.settle(&mut posts).await;
                    self.send(Reply::Goodbye);
                    return Ended::ByClient;
                }
                // Tungstenite queues the answer to a ping for the writer; a raw frame is never
                // read.
                Next::Read(Some(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }

    /// Leaves every group and tells others the user left, if this was their last socket.
    async fn finish(&mut self) {
        self.hub.layer.leave_all(self.member.id);
        if let Some(active) = self.active.take() {
            self.leave(&active).await;
        }
        if self
            .hub
            .presence
            .disconnect(self.member.id, &self.user)
            .await
        {
            self.hub
                .announce_presence(&self.user, false, &self.peers)
                .await;
        }
        tracing::debug!(user = %self.user.username, socket = self.member.id, "socket closed");
    }
}

pub(crate) fn messages_frame(messages: &[StoredMessage], swap: Swap) -> Utf8Bytes {
    frame(
        target::MESSAGES,
        swap,
        &views::messages(messages).into_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::mentions::MAX_MENTIONED;
    use crate::chat::reactions::{MAX_KINDS, NAMED};
    use crate::model::{Quoted, Reaction};

    /// The size of what `make` returns, without calling it.
    fn returned_size<A, R>(_make: impl FnOnce(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// An idle socket holds its two tasks' futures for its whole life, each the size of its
    /// largest state, in tokio task cells of the future and 104 bytes, in steps of 128;
    /// the socket's own is wrapped in 40 bytes more (its slot and the tracker's token).
    /// A value held across an await (a large result, a future moved into another) grows
    /// them by hundreds of bytes a socket without changing what the code does. The bounds
    /// are the largest futures that keep the cells at 768 and 640 bytes.
    #[test]
    fn an_idle_sockets_tasks_stay_small() {
        let socket = returned_size(
            |(hub, signed_in, client, socket, resume): (
                Arc<Hub>,
                SignedIn,
                Client,
                Connection,
                Resume,
            )| run(hub, signed_in, client, socket, resume),
        );
        type WriterParts = (
            Arc<Hub>,
            Subscriber,
            Arc<Backlog>,
            Arc<Revoked>,
            Arc<str>,
            connection::Outgoing,
        );
        let writer = returned_size(
            |(hub, member, backlog, revoked, session, sink): WriterParts| {
                write_loop(hub, member, backlog, revoked, session, "", sink)
            },
        );
        println!("socket's future {socket} bytes, writer's {writer}");
        assert!(socket <= 624, "the socket's future grew to {socket} bytes");
        assert!(writer <= 536, "the writer's future grew to {writer} bytes");
    }

    /// The reply backlog counts what a catch-up puts on the wire, escaping included, or a
    /// client that never reads could hold far more than the backlog allows.
    #[test]
    fn a_catch_ups_weight_is_at_least_its_frames() {
        for text in [
            "plain text",
            "\"quoted\"",
            "<&>",
            "é",
            "http://\"\"\"\" ",
            "https://example.com/\"<>\"",
            "> ",
            "*a*",
            "`\"`",
            "- a\n",
            "[\"](http://\"\")",
            "<http://a.b>",
            "```\n\"\"\n```\n",
        ] {
            // As many reactions as a message takes, each naming as many as it shows.
            let reactions: Vec<Reaction> = (0..MAX_KINDS)
                .map(|_| Reaction {
                    emoji: "👨‍👩‍👧‍👦".into(),
                    count: 10_000,
                    named: (0..NAMED)
                        .map(|_| User {
                            id: uuid::Uuid::now_v7().to_string(),
                            username: "\"<&>".repeat(8),
                        })
                        .collect(),
                })
                .collect();
            let messages: Vec<StoredMessage> = (1..=50)
                .map(|seq| StoredMessage {
                    id: uuid::Uuid::now_v7().to_string(),
                    room_id: "r".into(),
                    seq,
                    author: User {
                        id: "u".into(),
                        username: "ann".into(),
                    },
                    body: text.repeat(4000 / text.len()),
                    created_at_ms: 0,
                    client_id: Some(uuid::Uuid::now_v7().to_string()),
                    rev: seq,
                    edited_at_ms: None,
                    deleted: false,
                    reactions: reactions.clone(),
                    replying_to: Some(Box::new(Quoted {
                        id: uuid::Uuid::now_v7().to_string(),
                        author: "\"<&>".repeat(8),
                        snippet: "\"".repeat(Quoted::SNIPPET_CHARS),
                        deleted: false,
                    })),
                    // As many as a message names, each with the longest name.
                    mentions: (0..MAX_MENTIONED)
                        .map(|_| User {
                            id: uuid::Uuid::now_v7().to_string(),
                            username: "u".repeat(32),
                        })
                        .collect(),
                })
                .collect();
            let frame = messages_frame(&messages, Swap::BeforeEnd);
            let missed = Reply::Missed {
                room: Arc::from("r"),
                messages,
                through: 50,
            };
            assert!(
                writer::weight(&missed) >= frame.len(),
                "{text}: {} < {}",
                writer::weight(&missed),
                frame.len()
            );
        }
    }
}
