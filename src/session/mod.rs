//! One chat socket: a reader that turns client actions into store writes and publications,
//! and a writer that drains the socket's bounded queue onto the wire.
//!
//! The writer owns the socket's view (which room is active, unread counts) so that it can
//! decide per event, in queue order, whether to show a message or bump a badge. The reader
//! changes rooms by queueing an `Outbound::Enter`, which carries the new room's fragments
//! and the newest seq they contain: live messages up to that seq are already on screen and
//! are dropped, so switching rooms neither loses nor repeats a message. The writer records
//! which seqs it has shown, so catch-up reads and resyncs after a delivery gap add only
//! what is missing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};

use crate::chat::names::{InputError, MessageText};
use crate::chat::protocol::{Action, Swap, frame, frame_around, json_escaped};
use crate::chat::rate::{BYTES_PER_UNIT, MESSAGES_PER_UNIT, action_cost};
use crate::hub::Hub;
use crate::layer::{Event, LOBBY, Outbound, Reply, Subscriber, room_group, user_group};
use crate::model::{Room, RoomKind, RoomSummary, StoredMessage, User};
use crate::store::{AfterCommit, Draft, Posted, SignedIn, StoreError};
use crate::views;

mod membership;
mod view;
mod writer;

use view::Revoked;
use writer::{Backlog, write_loop};

/// What a catch-up found.
enum CatchUp {
    /// The client missed the messages after its position through `last`, at most
    /// `catch_up_limit` of them (see `Session::send_missed`).
    Missed { last: i64 },
    /// The client is further behind than that (or names a position the room never had):
    /// it is shown the room afresh. `missed` is how many messages it did not see, when known.
    TooFar { missed: Option<i64> },
}

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
    /// The connection broke, or the session could not start.
    Broken,
}

/// How long a socket's writer has to answer a client's close.
const GOODBYE: Duration = Duration::from_secs(2);

/// WebSocket close codes the client acts on.
pub mod close_code {
    /// The server is going away; reconnect (to another node) and catch up.
    pub const RESTARTING: u16 = 1012;
    /// The socket fell behind its queue; reconnect and catch up.
    pub const TRY_AGAIN: u16 = 1013;
    /// The socket's session ended (logged out, on any tab or node): sign in again.
    pub const LOGGED_OUT: u16 = 4001;
}

/// A socket announces typing at most this often.
const TYPING_EVERY: Duration = Duration::from_secs(2);

/// Serves one chat socket until it closes.
///
/// Not an `async fn`: an async fn keeps room for its arguments for as long as it runs, and
/// the unsplit socket is large; split first, and the task holds only the two halves.
pub fn run(
    hub: Arc<Hub>,
    signed_in: SignedIn,
    client: Client,
    socket: WebSocket,
    resume: Resume,
) -> impl Future<Output = ()> + Send + 'static {
    let (sink, stream) = socket.split();
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
    serve(hub, user, client, sink, stream, opening)
}

/// What a socket starts from: the rooms read with its session, and where it was before.
struct Opening {
    rooms: Vec<RoomSummary>,
    groups: Vec<Room>,
    resume: Resume,
}

async fn serve(
    hub: Arc<Hub>,
    user: User,
    client: Client,
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
    opening: Box<Opening>,
) {
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
        sink,
    ));
    let mut session = Session {
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
    tracing::debug!(user = %session.user.username, socket = session.member.id, "socket open");
    {
        let reader = async {
            // Boxed, like each action below: an idle socket's task then holds only the
            // small read loop, not the state of the largest action it might run.
            match Box::pin(session.start(opening)).await {
                Ok(()) => session.read_loop(stream).await,
                Err(e) => {
                    tracing::error!(error = %e, "could not start chat session");
                    Ended::Broken
                }
            }
        };
        tokio::select! {
            _ = &mut writer => {}
            ended = reader => if ended == Ended::ByClient {
                // The writer answers the client's close, as RFC 6455 asks, and ends.
                let _ = tokio::time::timeout(GOODBYE, &mut writer).await;
            }
        }
    }
    writer.abort();
    // Whatever the registry still queues for this socket until it leaves is dropped.
    session.member.outbox.close();
    // Boxed: its store writes are large futures, and inline they would sit in every idle
    // socket's task for the whole life of the connection.
    Box::pin(session.finish()).await;
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

struct Session {
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

impl Session {
    /// Queues `direct` for this socket. A client that stops reading its own answers
    /// fills its queue like any slow reader and is closed; once the writer has ended, the
    /// session ends too and nothing more is queued.
    fn send(&self, reply: Reply) {
        self.backlog.queued(reply.weight());
        self.hub
            .layer
            .registry()
            .push(&self.member, Outbound::Reply(Box::new(reply)));
    }

    fn send_error(&self, text: &str) {
        self.send(Reply::Frame(frame(
            "#errors",
            Swap::Inner,
            &views::error(text).into_string(),
        )));
    }

    /// Tells the user what an action did, where errors go.
    fn send_notice(&self, text: &str) {
        self.send(Reply::Frame(frame(
            "#errors",
            Swap::Inner,
            &views::notice(text).into_string(),
        )));
    }

    /// Joins the socket's groups, announces the user, and shows the first room.
    ///
    /// The rooms were read with the session, before the handshake finished: a conversation
    /// opened with this user between that read and the joins below is announced to a group
    /// this socket has not joined yet, and shows up at its next connect. (Reading the rooms
    /// here, before the joins, left the same gap; the handshake only widens it.)
    async fn start(&mut self, opening: Box<Opening>) -> Result<(), StoreError> {
        // Unboxed here, so that the box is freed when starting ends, not with the socket.
        let Opening {
            rooms,
            groups,
            resume,
        } = *opening;
        let layer = &self.hub.layer;
        let mut joins = vec![
            layer.join(LOBBY, &self.member),
            layer.join(&user_group(&self.user.id), &self.member),
        ];
        // A conversation closed by a block is not followed, nor posted in; a hidden one is
        // followed, so that a new message can bring it back.
        let mut hidden = HashMap::new();
        for summary in &rooms {
            if summary.blocked() {
                self.revoked.insert(Arc::from(summary.room.id.as_str()));
                continue;
            }
            joins.push(layer.join(&room_group(&summary.room.id), &self.member));
            if let (true, Some(peer)) = (summary.hidden, &summary.peer) {
                let entry = views::direct_item(&summary.room, peer, 0).into_string();
                hidden.insert(
                    Arc::from(summary.room.id.as_str()),
                    frame("#directs", Swap::BeforeEnd, &entry),
                );
            }
        }
        futures_util::future::join_all(joins).await;
        self.send(Reply::Rooms {
            unread: rooms
                .iter()
                .map(|s| (s.room.id.clone(), s.unread))
                .collect(),
            hidden,
        });

        self.peers = rooms
            .iter()
            .filter_map(|s| s.peer.as_ref().map(|p| p.id.clone()))
            .collect();
        if self.hub.presence.connect(self.member.id, &self.user).await {
            self.hub
                .announce_presence(&self.user, true, &self.peers)
                .await;
        }

        // While presence cannot be read, no dots rather than guesses.
        let contacts = self
            .hub
            .presence
            .online_among(&self.peers)
            .await
            .unwrap_or_default();
        // The node's capped list, not everyone online: a connect costs the same however
        // many people are here. Rendered and escaped once for every socket that connects
        // until the list changes, and spliced into this socket's sidebar. Read with no
        // await before the sidebar is queued: an arrival announced in between would reach
        // this socket first, and the sidebar would then replace it.
        let (people, more) = self
            .hub
            .roster
            .listed_html(|listed| json_escaped(&views::people(listed).into_string()));
        let sidebar = views::sidebar_with(
            &views::ChatView {
                me: &self.user,
                groups: &groups,
                rooms: &rooms,
                online: views::Online::Slot,
            },
            more,
            &contacts,
        )
        .into_string();
        let (before, after) = sidebar
            .split_once(views::PEOPLE_SLOT)
            .unwrap_or((&sidebar, ""));
        self.send(Reply::Frames(vec![
            frame(
                "#logged-user",
                Swap::Inner,
                &maud::html! { (self.user.username) }.into_string(),
            ),
            frame_around("#aside", Swap::Inner, before, &people, after),
        ]));

        // The rooms read with the session are the user's memberships, the same gate
        // `room_for_member` applies: a connect needs no more queries to choose. The room
        // resumed, else `#hi`, else the first group, else the first conversation listed.
        let resumed = resume
            .room
            .as_deref()
            .and_then(|room_id| rooms.iter().find(|s| s.room.id == room_id))
            .filter(|s| !s.blocked());
        // A page opened at a room's address (a link, a reload) enters that room, as
        // clicking it would; failing that, says why and goes on to the usual one.
        if let (None, Some(named)) = (resumed, resume.named) {
            let entered = match &named {
                Named::Group(name) => self.open_group_link(name).await,
                Named::Direct(name) => self.enter_direct(name).await,
            };
            match entered {
                Ok(()) => return Ok(()),
                Err(ActionError::Store(e)) => return Err(e),
                Err(refused) => self.report(refused),
            }
        }
        let first = resumed.or_else(|| {
            rooms.iter().filter(|s| s.listed()).min_by_key(|s| {
                (
                    s.room.name.as_deref() != Some("hi"),
                    s.room.kind != RoomKind::Group,
                )
            })
        });
        let Some(first) = first else {
            self.enter_nothing().await;
            return Ok(());
        };
        // Marking read is a write: skipped when nothing is unread.
        self.enter(Entry {
            room: first.room.clone(),
            peer: first.peer.clone(),
            resume_after: resumed.and(resume.after_seq),
            mark_read: first.unread > 0,
        })
        .await
    }

    /// When the room shown is one the user may no longer use, shows another, saying why.
    async fn step_out_of_revoked(&mut self) -> Result<(), StoreError> {
        let Some(active) = &self.active else {
            return Ok(());
        };
        if !self.revoked.contains(&active.room.id) {
            return Ok(());
        }
        let why = match &active.peer {
            Some(peer) => format!("Your conversation with {} is closed.", peer.username),
            None => format!(
                "You left #{}.",
                active.room.name.as_deref().unwrap_or_default()
            ),
        };
        let room_id = active.room.id.clone();
        match self.step_out_of(&room_id).await {
            Ok(()) => {}
            Err(ActionError::Store(e)) => return Err(e),
            Err(_) => {}
        }
        self.send_notice(&why);
        Ok(())
    }

    /// Shows no room: the user is in none (or left the last one).
    async fn enter_nothing(&mut self) {
        if let Some(previous) = self.active.take() {
            self.leave(&previous).await;
        }
        self.send(Reply::NoRoom(vec![
            frame("#group-name", Swap::Inner, ""),
            frame("#room-members", Swap::Inner, ""),
            frame("#room-members-more", Swap::Inner, ""),
            frame("#room-actions", Swap::Inner, ""),
            frame("#history-controls", Swap::Inner, ""),
            frame(
                "#messages-list",
                Swap::Inner,
                &views::no_room().into_string(),
            ),
        ]));
    }

    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>) -> Ended {
        loop {
            let message = tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(message)) => message,
                    _ => return Ended::Broken,
                },
                // The room shown was taken away on another socket (left, or closed by a
                // block): move on, as that socket did.
                () = self.revoked.changed() => {
                    if let Err(e) = Box::pin(self.step_out_of_revoked()).await {
                        tracing::warn!(error = %e, "could not move on from a room taken away");
                    }
                    continue;
                }
            };
            match message {
                Message::Text(text) => {
                    self.backlog.wait_for_room().await;
                    self.handle(text.as_str()).await
                }
                Message::Binary(_) => self.send_error("Send text frames holding JSON."),
                Message::Close(_) => {
                    self.send(Reply::Goodbye);
                    return Ended::ByClient;
                }
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    }

    async fn handle(&mut self, text: &str) {
        let result = match Action::parse(text) {
            Ok(action) => Box::pin(self.act(action)).await,
            // Refusing costs a unit too, and past the budget nothing is said: a stream of
            // bad frames is not answered frame for frame.
            Err(e) if self.hub.budget.spend(&self.user.id, 1.0) => Err(ActionError::Input(e)),
            Err(_) => Ok(()),
        };
        if let Err(e) = result {
            self.report(e);
        }
    }

    /// Tells the user why an action failed.
    fn report(&self, error: ActionError) {
        match error {
            ActionError::Input(e) | ActionError::Busy(e) => self.send_error(&e.0),
            ActionError::PostRefused {
                reason,
                client_id,
                retry,
            } => self.send(Reply::Frame(frame(
                "#errors",
                Swap::Inner,
                &views::post_refused(&reason.0, &client_id, retry).into_string(),
            ))),
            ActionError::Blocked(peer) => self.send(Reply::Frame(frame(
                "#errors",
                Swap::Inner,
                &views::blocked(&peer).into_string(),
            ))),
            ActionError::Store(e) => {
                tracing::error!(error = %e, user = %self.user.username, "action failed");
                self.send_error(
                    "Something went wrong on our side; nothing was changed. Please try again.",
                );
            }
        }
    }

    /// The room this socket shows, unless the user may no longer use it (left on another
    /// socket, or closed by a block): then nothing is read from or sent to it.
    fn usable_room(&self) -> Result<&ActiveRoom, ActionError> {
        match &self.active {
            None => refuse("Enter a room first."),
            Some(active) if self.revoked.contains(&active.room.id) => {
                refuse("You can no longer use this room.")
            }
            Some(active) => Ok(active),
        }
    }

    async fn act(&mut self, action: Action) -> Result<(), ActionError> {
        let cost = action_cost(&action);
        if cost > 0.0 && !self.hub.budget.spend(&self.user.id, cost) {
            if action == Action::Typing {
                return Ok(());
            }
            return refuse("You are doing that too fast; wait a moment and try again.");
        }
        match action {
            Action::ChangeGroup { name, is_group } if is_group => self.enter_group(&name).await,
            Action::CreateGroup { name } => self.enter_group(&name).await,
            Action::ChangeGroup { name, .. } => self.enter_direct(&name).await,
            Action::NewMessage {
                text,
                client_id,
                room_id,
            } => {
                let posted = self
                    .post(&text, client_id.as_deref(), room_id.as_deref())
                    .await;
                match (posted, client_id) {
                    // Said with the post's id, so the page can show which one was not sent,
                    // and send it again by itself when that may work.
                    (Err(ActionError::Input(reason)), Some(client_id)) => {
                        Err(ActionError::PostRefused {
                            reason,
                            client_id,
                            retry: false,
                        })
                    }
                    (Err(ActionError::Busy(reason)), Some(client_id)) => {
                        Err(ActionError::PostRefused {
                            reason,
                            client_id,
                            retry: true,
                        })
                    }
                    (result, _) => result,
                }
            }
            Action::LoadOlder { before_seq } => self.load_older(before_seq).await,
            Action::CatchUp { after_seq } => {
                let active = self.usable_room()?;
                match self.catch_up(&active.room.id, after_seq).await? {
                    CatchUp::Missed { last } => {
                        let room = Arc::from(active.room.id.as_str());
                        self.send_missed(&room, after_seq, last).await?;
                    }
                    CatchUp::TooFar { .. } => {
                        let entry = Entry {
                            room: active.room.clone(),
                            peer: active.peer.clone(),
                            resume_after: None,
                            mark_read: false,
                        };
                        self.enter(entry).await?;
                    }
                }
                Ok(())
            }
            Action::Typing => {
                self.typing().await;
                Ok(())
            }
            Action::BrowseGroups { query, after } => self.browse_groups(&query, &after).await,
            Action::LeaveGroup { name } => self.leave_group(&name).await,
            Action::HideConversation { username } => self.hide_conversation(&username).await,
            Action::BlockUser { username } => self.block_user(&username).await,
            Action::UnblockUser { username } => self.unblock_user(&username).await,
            Action::BlockedPeople => self.list_blocked().await,
        }
    }

    /// Makes `room` the active one: presence moves, and the room's header, members and
    /// history (or, when resuming, what was missed) replace the old room's.
    async fn enter(&mut self, entry: Entry) -> Result<(), StoreError> {
        let room_key: Arc<str> = Arc::from(entry.room.id.as_str());
        let group = room_group(&entry.room.id);
        self.hub.layer.join(&group, &self.member).await;
        self.hub.layer.registry().view(&group, &self.member);
        // Before presence and history are read: what is published about the room from
        // now until `Enter` is queued is held and played after them, so the list and the
        // history shown miss nothing, whenever below they are read.
        self.send(Reply::Entering {
            room: room_key.clone(),
        });
        let entered = self.show_room(entry, group, room_key.clone()).await;
        if entered.is_err() {
            self.send(Reply::NotEntered { room: room_key });
            // Presence may already list the socket in the room it could not show.
            if let Some(active) = self.active.take() {
                self.leave_presence(&active.room.id).await;
            }
        }
        entered
    }

    /// The part of `enter` after the writer holds the room's events.
    async fn show_room(
        &mut self,
        entry: Entry,
        group: String,
        room_key: Arc<str>,
    ) -> Result<(), StoreError> {
        let Entry {
            room,
            peer,
            resume_after,
            mark_read,
        } = entry;
        let previous = self.active.take();
        let same_room = previous.as_ref().is_some_and(|p| p.room.id == room.id);
        if let Some(previous) = previous.filter(|_| !same_room) {
            self.leave(&previous).await;
        }
        // Active before presence is told, so that however entering ends (an error below,
        // or the socket closing meanwhile), the room is left again.
        self.active = Some(ActiveRoom {
            room: room.clone(),
            group,
            peer: peer.clone(),
        });
        let members = if same_room {
            self.hub.presence.in_room(&room.id).await
        } else {
            let (listing, members) = self
                .hub
                .presence
                .enter(self.member.id, &room.id, &self.user)
                .await;
            self.hub
                .announce_listing(&room.id, &self.user, &listing)
                .await;
            members
        };
        if mark_read {
            self.hub.store.mark_read(&room.id, &self.user.id).await?;
        }

        let title = views::room_title(&room, peer.as_ref());
        let mut frames = vec![
            frame(
                "#group-name",
                Swap::Inner,
                &views::room_title_markup(&room, &title).into_string(),
            ),
            self.hub
                .list_frames
                .frame(&room.id, &members.listed, |listed| {
                    frame(
                        "#room-members",
                        Swap::Inner,
                        &views::members(listed).into_string(),
                    )
                }),
            frame(
                "#room-members-more",
                Swap::Inner,
                &views::people_more(members.more),
            ),
            frame(&format!("#unread-{}", room.id), Swap::Inner, ""),
            frame("#typing", Swap::Inner, ""),
            frame(
                "#room-actions",
                Swap::Inner,
                &views::room_actions(&room, peer.as_ref()).into_string(),
            ),
        ];
        let (mut missed, mut skipped) = (None, None);
        if let Some(after) = resume_after {
            match self.catch_up(&room.id, after).await? {
                CatchUp::Missed { last } => missed = Some((after, last)),
                CatchUp::TooFar { missed } => skipped = Some(missed),
            }
        }
        let floor = match &missed {
            Some((after, _)) => *after,
            None => {
                let history = self
                    .hub
                    .store
                    .latest_messages(&room.id, views::PAGE_SIZE)
                    .await?;
                self.charge_read(&history);
                frames.push(frame(
                    "#history-controls",
                    Swap::Inner,
                    &views::history_controls(views::older_after_page(&history), skipped)
                        .into_string(),
                ));
                frames.push(frame(
                    "#messages-list",
                    Swap::Inner,
                    &views::messages(&history).into_string(),
                ));
                history.last().map_or(0, |m| m.seq)
            }
        };
        self.send(Reply::Enter {
            room: room_key.clone(),
            floor,
            frames,
            catching_up: missed.is_some(),
        });
        if let Some((after, last)) = missed {
            let sent = self.send_missed(&room_key, after, last).await;
            // The live messages held meanwhile follow the backlog, in seq order.
            self.send(Reply::CaughtUp { room: room_key });
            sent?;
        }
        Ok(())
    }

    /// Presence and read position when the socket leaves a room (or closes).
    async fn leave(&self, previous: &ActiveRoom) {
        self.leave_presence(&previous.room.id).await;
        if let Err(e) = self
            .hub
            .store
            .mark_read(&previous.room.id, &self.user.id)
            .await
        {
            tracing::warn!(error = %e, "could not record read position");
        }
    }

    /// Takes the socket out of `room_id`'s presence, telling the room if that shows.
    async fn leave_presence(&self, room_id: &str) {
        let listing = self
            .hub
            .presence
            .leave(self.member.id, room_id, &self.user)
            .await;
        self.hub
            .announce_listing(room_id, &self.user, &listing)
            .await;
    }

    /// Every message in `room` after `after_seq`, when there are at most `catch_up_limit`
    /// of them: the cost of a catch-up is bounded whatever the room's history.
    async fn catch_up(&self, room_id: &str, after_seq: i64) -> Result<CatchUp, StoreError> {
        let limit = self.hub.limits.catch_up_limit;
        let Some(last) = self.hub.store.last_seq(room_id).await? else {
            return Ok(CatchUp::TooFar { missed: None });
        };
        if after_seq < 0 || after_seq > last {
            return Ok(CatchUp::TooFar { missed: None });
        }
        if last - after_seq > limit {
            return Ok(CatchUp::TooFar {
                missed: Some(last - after_seq),
            });
        }
        Ok(CatchUp::Missed { last })
    }

    /// Sends the messages of `room` after `after` through `last`, a page at a time, each
    /// once the socket has written most of the one before: however far behind, a client
    /// that stops reading holds at most about a page of them in the node's memory.
    async fn send_missed(
        &self,
        room: &Arc<str>,
        mut after: i64,
        last: i64,
    ) -> Result<(), StoreError> {
        while after < last {
            self.backlog.wait_for_room().await;
            let page = self
                .hub
                .store
                .messages_after(room, after, views::PAGE_SIZE)
                .await?;
            let Some(newest) = page.last() else { break };
            after = newest.seq;
            self.charge_read(&page);
            self.send(Reply::Missed {
                room: room.clone(),
                messages: page,
            });
        }
        Ok(())
    }

    /// Charges the user's budget for `messages` read from history: by their count, or by
    /// their size where they are long (a page of 4,000-character messages is a megabyte).
    fn charge_read(&self, messages: &[StoredMessage]) {
        let bytes: usize = messages.iter().map(|m| m.body.len()).sum();
        let units = (messages.len() as f64 / MESSAGES_PER_UNIT).max(bytes as f64 / BYTES_PER_UNIT);
        self.hub.budget.charge(&self.user.id, units);
    }

    async fn post(
        &mut self,
        raw: &str,
        client_id: Option<&str>,
        room_id: Option<&str>,
    ) -> Result<(), ActionError> {
        // The room shown, or another the user is in (a message written there while the
        // connection was down, sent once it is back).
        let (room_id, elsewhere) = match room_id {
            Some(id) if self.active.as_ref().is_none_or(|a| a.room.id != id) => {
                if self.revoked.contains(id) {
                    return refuse("You can no longer post in that room.");
                }
                match self.hub.store.room_for_member(id, &self.user.id).await? {
                    Some(room) => (room.id, true),
                    None => return refuse("You are not in that room any more."),
                }
            }
            _ => (self.usable_room()?.room.id.clone(), false),
        };
        if !self.hub.rate.allow(&self.user.id) {
            return Err(ActionError::Busy(InputError(
                "You are sending messages too fast; wait a moment and try again.".into(),
            )));
        }
        let text = MessageText::parse(raw, self.hub.limits.max_message_chars)?;
        // Store before send: nothing is published (or acknowledged) until the row commits.
        // The store's writer runs the publication once the batch holding this message has
        // committed, in seq order, whether or not this socket is still here to hear the
        // answer: a socket that dies mid-post cannot leave a stored message unpublished.
        let hub = self.hub.clone();
        let group = room_group(&room_id);
        let publish: AfterCommit = Box::new(move |message: &StoredMessage| {
            let event = Event::Message {
                room: Arc::from(message.room_id.as_str()),
                seq: message.seq,
                frame: messages_frame(std::slice::from_ref(message), Swap::BeforeEnd),
            };
            Box::pin(async move {
                if let Err(e) = hub.layer.publish(&group, event).await {
                    tracing::warn!(error = %e, group, "publish failed");
                }
            })
        });
        let draft = Draft {
            room_id: &room_id,
            author: &self.user,
            body: text.as_str(),
            client_id,
        };
        let posted = self.hub.store.post_message_then(draft, publish).await;
        if let (Ok(_), true, Some(client_id)) = (&posted, elsewhere, client_id) {
            // Its article goes to that room's viewers, not to this socket, which shows
            // another room: it is told the post is stored.
            let sent = frame(&format!("#pending-{client_id}"), Swap::Remove, "");
            self.send(Reply::Frame(sent));
            return Ok(());
        }
        match posted {
            Ok(Posted { repeat: false, .. }) => Ok(()),
            // Posted before (a retry whose first answer was lost): stored and published
            // then. The sender is answered as the first time, with the same article
            // (which replaces itself on a page that has it), if it still shows that room.
            Ok(Posted {
                message,
                repeat: true,
            }) => {
                if self
                    .active
                    .as_ref()
                    .is_some_and(|a| a.room.id == message.room_id)
                {
                    let article = messages_frame(std::slice::from_ref(&message), Swap::BeforeEnd);
                    self.send(Reply::Frame(article));
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "message not stored");
                Err(ActionError::Busy(InputError(
                    "Your message could not be stored, so it was not sent. Please try again."
                        .into(),
                )))
            }
        }
    }

    async fn load_older(&self, before_seq: i64) -> Result<(), ActionError> {
        let active = self.usable_room()?;
        let page = self
            .hub
            .store
            .messages_before(&active.room.id, before_seq, views::PAGE_SIZE)
            .await?;
        self.charge_read(&page);
        self.send(Reply::Frames(vec![
            messages_frame(&page, Swap::AfterBegin),
            frame(
                "#load-older",
                Swap::Outer,
                &views::load_older(views::older_after_page(&page)).into_string(),
            ),
        ]));
        Ok(())
    }

    async fn typing(&mut self) {
        if self
            .last_typing
            .is_some_and(|at| at.elapsed() < TYPING_EVERY)
        {
            return;
        }
        let Ok(active) = self.usable_room() else {
            return;
        };
        let event = Event::Viewers {
            room: Arc::from(active.room.id.as_str()),
            frame: frame(
                "#typing",
                Swap::Inner,
                &views::typing(&self.user).into_string(),
            ),
        };
        let group = active.group.clone();
        self.last_typing = Some(Instant::now());
        self.publish(&group, event).await;
    }

    async fn publish(&self, group: &str, event: Event) {
        if let Err(e) = self.hub.layer.publish(group, event).await {
            tracing::warn!(error = %e, group, "publish failed");
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
        "#messages-list",
        swap,
        &views::messages(messages).into_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reply backlog counts what a catch-up puts on the wire, escaping included, or a
    /// client that never reads could hold far more than the backlog allows.
    #[test]
    fn a_catch_ups_weight_is_at_least_its_frames() {
        for text in ["plain text", "\"quoted\"", "<&>", "é"] {
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
                })
                .collect();
            let frame = messages_frame(&messages, Swap::BeforeEnd);
            let missed = Reply::Missed {
                room: Arc::from("r"),
                messages,
            };
            assert!(
                missed.weight() >= frame.len(),
                "{text}: {} < {}",
                missed.weight(),
                frame.len()
            );
        }
    }
}
