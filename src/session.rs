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

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;

use crate::chat::names::{GroupName, InputError, MessageText, Username};
use crate::chat::protocol::{Action, Swap, frame, frame_around, json_escaped};
use crate::chat::rate::{MESSAGES_PER_UNIT, action_cost};
use crate::hub::Hub;
use crate::layer::outbox::{KEEP_SLOTS, Stop};
use crate::layer::{Event, LOBBY, Member, room_group, user_group};
use crate::store::{AfterCommit, Room, RoomSummary, SignedIn, StoreError, StoredMessage, User};
use crate::views;

/// What a socket's writer receives.
///
/// Two words: queues hold their items by value, up to a thousand per socket, so the size
/// of this enum is paid per slot. Broadcasts share one `Event`; what is for this socket
/// alone is boxed.
#[derive(Debug)]
pub enum Outbound {
    /// Something published to a group the socket joined.
    Event(Arc<Event>),
    /// Something for this socket alone.
    Direct(Box<Direct>),
}

const _: () = assert!(std::mem::size_of::<Outbound>() == 16);

/// What a socket's own session tells its writer.
#[derive(Debug)]
pub enum Direct {
    /// A frame for this socket alone.
    Frame(Utf8Bytes),
    /// Frames for this socket alone, queued as one so that they go out in one write.
    Frames(Vec<Utf8Bytes>),
    /// The socket's unread counts, as stored when it connected.
    Unread(HashMap<String, i64>),
    /// The socket is about to make `room` active: from here on the writer holds that
    /// room's messages and member-list changes back until the matching `Enter` shows the
    /// history and the list they follow.
    Entering { room: Arc<str> },
    /// Entering `room` failed: what was held for it is let go.
    NotEntered { room: Arc<str> },
    /// The socket now has `room` active: show `frames`, which hold every message up to
    /// `floor`; live messages up to there are dropped.
    Enter {
        room: Arc<str>,
        floor: i64,
        frames: Vec<Utf8Bytes>,
    },
    /// Messages of `room` read from the store (catch-up); the writer shows those the
    /// socket has not shown yet.
    Missed {
        room: Arc<str>,
        messages: Vec<StoredMessage>,
    },
}

impl Direct {
    /// Roughly how many bytes this puts on the wire: what the socket's own replies hold
    /// in memory until they are written (see `Backlog`).
    fn weight(&self) -> usize {
        match self {
            Direct::Frame(f) => f.len(),
            Direct::Frames(frames) | Direct::Enter { frames, .. } => {
                frames.iter().map(|f| f.len()).sum()
            }
            Direct::Missed { messages, .. } => messages.iter().map(|m| m.body.len() + 300).sum(),
            Direct::Unread(_) | Direct::Entering { .. } | Direct::NotEntered { .. } => 0,
        }
    }
}

/// Bytes of a socket's own replies (history, catch-up, errors) queued and not yet written.
///
/// The reader takes the next action only while this is under `MAX_REPLY_BACKLOG`: a client
/// that asks and asks but never reads would otherwise have the node hold every answer, up
/// to the queue's thousand slots of history pages each.
#[derive(Default)]
struct Backlog {
    bytes: AtomicUsize,
    drained: Notify,
}

/// See `Backlog`.
const MAX_REPLY_BACKLOG: usize = 256 * 1024;

impl Backlog {
    fn queued(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn written(&self, bytes: usize) {
        if bytes > 0 {
            self.bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.drained.notify_waiters();
        }
    }

    /// Waits until fewer than `MAX_REPLY_BACKLOG` bytes of replies wait to be written.
    async fn wait_for_room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.bytes.load(Ordering::Relaxed) < MAX_REPLY_BACKLOG {
                return;
            }
            drained.await;
        }
    }
}

/// What a catch-up found.
enum CatchUp {
    /// The client missed the messages after its position through `last`, at most
    /// `catch_up_limit` of them (see `Session::send_missed`).
    Missed { last: i64 },
    /// The client is further behind than that (or names a position the room never had):
    /// it is shown the room afresh. `missed` is how many messages it did not see, when known.
    TooFar { missed: Option<i64> },
}

/// Where a reconnecting client left off.
#[derive(Debug, Default, Clone)]
pub struct Resume {
    pub room: Option<String>,
    pub after_seq: Option<i64>,
}

/// WebSocket close codes the client acts on.
pub mod close_code {
    /// The server is going away; reconnect (to another node) and catch up.
    pub const RESTARTING: u16 = 1012;
    /// The socket fell behind its queue; reconnect and catch up.
    pub const TRY_AGAIN: u16 = 1013;
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
    serve(hub, user, sink, stream, opening)
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
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
    opening: Box<Opening>,
) {
    let member = Member::new(
        hub.layer.registry().next_socket_id(),
        hub.limits.outbound_queue,
    );
    let backlog = Arc::new(Backlog::default());
    let mut writer = tokio::spawn(write_loop(
        hub.clone(),
        member.clone(),
        backlog.clone(),
        sink,
    ));
    let mut session = Session {
        hub,
        user,
        member,
        backlog,
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
                Err(e) => tracing::error!(error = %e, "could not start chat session"),
            }
        };
        tokio::select! {
            _ = &mut writer => {}
            _ = reader => {}
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
    member: Member,
    backlog: Arc<Backlog>,
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
    fn send(&self, direct: Direct) {
        self.backlog.queued(direct.weight());
        self.hub
            .layer
            .registry()
            .push(&self.member, Outbound::Direct(Box::new(direct)));
    }

    fn send_error(&self, text: &str) {
        self.send(Direct::Frame(frame(
            "#errors",
            Swap::Inner,
            &views::error(text).into_string(),
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
            mut groups,
            resume,
        } = *opening;
        let layer = &self.hub.layer;
        let mut joins = vec![
            layer.join(LOBBY, &self.member),
            layer.join(&user_group(&self.user.id), &self.member),
        ];
        for summary in &rooms {
            joins.push(layer.join(&room_group(&summary.room.id), &self.member));
        }
        futures_util::future::join_all(joins).await;
        self.send(Direct::Unread(
            rooms
                .iter()
                .map(|s| (s.room.id.clone(), s.unread))
                .collect(),
        ));

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
        self.send(Direct::Frames(vec![
            frame(
                "#logged-user",
                Swap::Inner,
                &maud::html! { (self.user.username) }.into_string(),
            ),
            frame_around("#aside", Swap::Inner, before, &people, after),
        ]));

        // The rooms read with the session are the user's memberships, the same gate `room_for_member`
        // applies, and the groups include `#hi`: a connect needs no more queries to choose.
        let unread_in = |room_id: &str| {
            rooms
                .iter()
                .find(|s| s.room.id == room_id)
                .map(|s| s.unread)
        };
        let resumed = resume.room.as_deref().and_then(|room_id| {
            rooms
                .iter()
                .find(|s| s.room.id == room_id)
                .map(|s| (s.room.clone(), s.peer.clone(), s.unread))
        });
        match resumed {
            Some((room, peer, unread)) => {
                self.enter(Entry {
                    room,
                    peer,
                    resume_after: resume.after_seq,
                    mark_read: unread > 0,
                })
                .await
            }
            None => {
                let first = match groups.iter().position(|g| g.name.as_deref() == Some("hi")) {
                    Some(hi) => Some(groups.swap_remove(hi)),
                    None => groups.into_iter().next(),
                };
                if let Some(room) = first {
                    // Marking read is a write: skipped when nothing is unread.
                    let mark_read = match unread_in(&room.id) {
                        Some(unread) => unread > 0,
                        None => {
                            self.hub.store.join_group(&room.id, &self.user.id).await?;
                            true
                        }
                    };
                    self.enter(Entry::group(room, mark_read)).await?;
                }
                Ok(())
            }
        }
    }

    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>) {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(text) => {
                    self.backlog.wait_for_room().await;
                    self.handle(text.as_str()).await
                }
                Message::Binary(_) => self.send_error("Send text frames holding JSON."),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    }

    async fn handle(&mut self, text: &str) {
        let result = match Action::parse(text) {
            Ok(action) => Box::pin(self.act(action)).await,
            Err(e) => Err(ActionError::Input(e)),
        };
        match result {
            Ok(()) => {}
            Err(ActionError::Input(e)) => self.send_error(&e.0),
            Err(ActionError::Store(e)) => {
                tracing::error!(error = %e, user = %self.user.username, "action failed");
                self.send_error(
                    "Something went wrong on our side; nothing was changed. Please try again.",
                );
            }
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
            Action::NewMessage { text } => self.post(&text).await,
            Action::LoadOlder { before_seq } => self.load_older(before_seq).await,
            Action::CatchUp { after_seq } => {
                let Some(active) = &self.active else {
                    return Ok(());
                };
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
        }
    }

    async fn enter_group(&mut self, raw_name: &str) -> Result<(), ActionError> {
        let name = GroupName::parse(raw_name)?;
        let store = &self.hub.store;
        let member = match store.group_by_name(name.as_str()).await? {
            Some(room) => store
                .room_for_member(&room.id, &self.user.id)
                .await?
                .is_some(),
            None => false,
        };
        if !member {
            // Checked before anything is created, so a refused request changes nothing.
            self.check_room_limit().await?;
        }
        let (room, created) = store.find_or_create_group(name.as_str()).await?;
        if created {
            tracing::info!(group = name.as_str(), by = %self.user.username, "group created");
            self.publish(
                LOBBY,
                Event::All {
                    frame: frame(
                        "#groups",
                        Swap::BeforeEnd,
                        &views::group_item(&room, 0).into_string(),
                    ),
                },
            )
            .await;
        }
        if !member {
            self.hub.store.join_group(&room.id, &self.user.id).await?;
        }
        self.enter(Entry::group(room, true)).await?;
        Ok(())
    }

    /// Refuses a new membership once the user belongs to as many rooms as allowed.
    async fn check_room_limit(&self) -> Result<(), ActionError> {
        let max = self.hub.limits.max_rooms_per_user;
        if self.hub.store.membership_count(&self.user.id).await? >= max {
            return refuse(format!(
                "You belong to {max} rooms, the most allowed; you can still use those."
            ));
        }
        Ok(())
    }

    async fn enter_direct(&mut self, raw_name: &str) -> Result<(), ActionError> {
        let shown: String = raw_name.chars().take(32).collect();
        let no_such_user = || format!("There is no user named \"{shown}\".");
        let Ok(name) = Username::parse(raw_name) else {
            return refuse(no_such_user());
        };
        let Some(peer) = self.hub.store.user_by_name(&name).await? else {
            return refuse(no_such_user());
        };
        if peer.id == self.user.id {
            return refuse("That is you: pick someone else to talk to.");
        }
        if self
            .hub
            .store
            .find_direct(&self.user, &peer)
            .await?
            .is_none()
        {
            self.check_room_limit().await?;
        }
        let (room, created) = self
            .hub
            .store
            .find_or_create_direct(&self.user, &peer)
            .await?;
        if !self.peers.contains(&peer.id) {
            self.peers.push(peer.id.clone());
        }
        if created {
            // Both people's sockets, on every node, start following the new room.
            for (owner, other) in [(&peer, &self.user), (&self.user, &peer)] {
                let item = views::direct_item(&room, other, 0).into_string();
                self.publish(
                    &user_group(&owner.id),
                    Event::RoomAdded {
                        room: Arc::from(room.id.as_str()),
                        frame: frame("#directs", Swap::BeforeEnd, &item),
                    },
                )
                .await;
            }
        }
        self.enter(Entry {
            room,
            peer: Some(peer),
            resume_after: None,
            mark_read: true,
        })
        .await?;
        Ok(())
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
        self.send(Direct::Entering {
            room: room_key.clone(),
        });
        let entered = self.show_room(entry, group, room_key.clone()).await;
        if entered.is_err() {
            self.send(Direct::NotEntered { room: room_key });
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
                self.charge_read(history.len());
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
        self.send(Direct::Enter {
            room: room_key.clone(),
            floor,
            frames,
        });
        if let Some((after, last)) = missed {
            self.send_missed(&room_key, after, last).await?;
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
            self.charge_read(page.len());
            self.send(Direct::Missed {
                room: room.clone(),
                messages: page,
            });
        }
        Ok(())
    }

    /// Charges the user's budget for `messages` read from history.
    fn charge_read(&self, messages: usize) {
        self.hub
            .budget
            .charge(&self.user.id, messages as f64 / MESSAGES_PER_UNIT);
    }

    async fn post(&mut self, raw: &str) -> Result<(), ActionError> {
        let Some(active) = &self.active else {
            return refuse("Enter a room before posting.");
        };
        if !self.hub.rate.allow(&self.user.id) {
            return refuse("You are sending messages too fast; wait a moment and try again.");
        }
        let text = MessageText::parse(raw, self.hub.limits.max_message_chars)?;
        // Store before send: nothing is published (or acknowledged) until the row commits.
        // The store's writer runs the publication once the batch holding this message has
        // committed, in seq order, whether or not this socket is still here to hear the
        // answer: a socket that dies mid-post cannot leave a stored message unpublished.
        let hub = self.hub.clone();
        let group = active.group.clone();
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
        let stored = self
            .hub
            .store
            .post_message_then(&active.room.id, &self.user, text.as_str(), publish)
            .await;
        match stored {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "message not stored");
                refuse("Your message could not be stored, so it was not sent. Please try again.")
            }
        }
    }

    async fn load_older(&self, before_seq: i64) -> Result<(), ActionError> {
        let Some(active) = &self.active else {
            return Ok(());
        };
        let page = self
            .hub
            .store
            .messages_before(&active.room.id, before_seq, views::PAGE_SIZE)
            .await?;
        self.charge_read(page.len());
        self.send(Direct::Frames(vec![
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
        let Some(active) = &self.active else { return };
        if self
            .last_typing
            .is_some_and(|at| at.elapsed() < TYPING_EVERY)
        {
            return;
        }
        self.last_typing = Some(Instant::now());
        let event = Event::Viewers {
            room: Arc::from(active.room.id.as_str()),
            frame: frame(
                "#typing",
                Swap::Inner,
                &views::typing(&self.user).into_string(),
            ),
        };
        let group = active.group.clone();
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

fn messages_frame(messages: &[StoredMessage], swap: Swap) -> Utf8Bytes {
    frame(
        "#messages-list",
        swap,
        &views::messages(messages).into_string(),
    )
}

/// The socket's view, owned by its writer.
#[derive(Default)]
struct View {
    active: Option<Arc<str>>,
    /// Every message of the active room up to this seq has been shown.
    shown_through: i64,
    /// Seqs above `shown_through` already shown (messages from one node can overtake
    /// another's); with it, nothing is shown twice and a resync knows where the hole is.
    shown_above: BTreeSet<i64>,
    unread: HashMap<String, i64>,
    /// Set by `Event::Resync`; the writer then reads what was missed from the store.
    resync: bool,
    /// The room being entered and what arrived for it before its history and list did.
    entering: Option<(Arc<str>, Vec<Held>)>,
}

/// Waiting for its room's history and member list to be shown first.
enum Held {
    /// A message, by seq.
    Message(i64, Utf8Bytes),
    /// A change of the member list.
    Viewers(Utf8Bytes),
}

impl View {
    /// The frames `outbound` puts on the wire for this socket, in order.
    fn frames(&mut self, outbound: Outbound, hub: &Hub, member: &Member, out: &mut Vec<Utf8Bytes>) {
        let direct = match outbound {
            Outbound::Event(event) => return self.event(&event, hub, member, out),
            Outbound::Direct(direct) => *direct,
        };
        match direct {
            Direct::Frame(f) => out.push(f),
            Direct::Frames(frames) => out.extend(frames),
            Direct::Unread(unread) => self.unread = unread,
            Direct::Entering { room } => self.entering = Some((room, Vec::new())),
            Direct::NotEntered { room } => {
                if self.entering.as_ref().is_some_and(|(r, _)| *r == room) {
                    self.entering = None;
                }
            }
            Direct::Enter {
                room,
                floor,
                frames,
            } => {
                out.extend(frames);
                self.unread.insert(room.to_string(), 0);
                self.shown_through = floor;
                self.shown_above.clear();
                let held = match self.entering.take() {
                    Some((entering, held)) if entering == room => held,
                    _ => Vec::new(),
                };
                self.active = Some(room);
                for held in held {
                    match held {
                        Held::Message(seq, f) => self.show(seq, f, out),
                        Held::Viewers(f) => out.push(f),
                    }
                }
            }
            Direct::Missed { room, messages } => {
                if self.active.as_ref() == Some(&room) {
                    self.show_missed(messages, out);
                }
            }
        }
    }

    /// The frames a published event puts on the wire for this socket.
    fn event(&mut self, event: &Event, hub: &Hub, member: &Member, out: &mut Vec<Utf8Bytes>) {
        match event {
            Event::Message {
                room,
                seq,
                frame: f,
            } => {
                if let Some(held) = self.held_for(room) {
                    held.push(Held::Message(*seq, f.clone()));
                } else if self.active.as_ref() == Some(room) {
                    self.show(*seq, f.clone(), out);
                } else {
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
                out.push(f.clone());
            }
        }
    }
}

impl View {
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
    async fn missed_frames(&mut self, hub: &Hub, out: &mut Vec<Utf8Bytes>) {
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

async fn write_loop(
    hub: Arc<Hub>,
    member: Member,
    backlog: Arc<Backlog>,
    mut sink: SplitSink<WebSocket, Message>,
) {
    let outbox = &member.outbox;
    let mut view = View::default();
    let mut taken = VecDeque::new();
    let mut frames = Vec::new();
    let mut last_write: Option<Instant> = None;
    loop {
        if let Err(stop) = outbox.take(&mut taken).await {
            return close_for(&mut sink, stop).await;
        }
        // A socket that wrote moments ago is busy: gather what arrives until its gap is
        // over and send it in one write. Loopback or not, each write is a system call and a
        // TCP segment; a busy room otherwise costs one of each per message per socket.
        if let Some(due) = last_write.map(|at| at + hub.pacing.gap())
            && Instant::now() < due
        {
            tokio::select! {
                biased;
                _ = outbox.stopped() => {}
                _ = tokio::time::sleep_until(due.into()) => {}
            }
            // Falling behind drops what is queued; a shutdown lets it out first, and the
            // close follows at the next take.
            if let Err(Stop::Lagging) = outbox.take_queued(&mut taken) {
                return close_for(&mut sink, Stop::Lagging).await;
            }
        }
        let mut replies = 0;
        for outbound in taken.drain(..) {
            if let Outbound::Direct(direct) = &outbound {
                replies += direct.weight();
            }
            view.frames(outbound, &hub, &member, &mut frames);
        }
        if taken.capacity() > KEEP_SLOTS {
            // After a burst: let the memory go rather than hold it for the socket's life.
            taken = VecDeque::new();
        }
        if view.resync {
            view.resync = false;
            Box::pin(view.missed_frames(&hub, &mut frames)).await;
        }
        // One flush for everything taken: one system call for many frames.
        let write = async {
            for f in frames.drain(..) {
                sink.feed(Message::Text(f)).await?;
            }
            sink.flush().await
        };
        // A client that stops reading blocks the write; if it is meanwhile stopped as
        // lagging (or the node stops), the connection is dropped, as no close frame could
        // reach it.
        tokio::select! {
            biased;
            written = write => if written.is_err() { return },
            _ = outbox.stopped() => return,
        }
        backlog.written(replies);
        let metrics = hub.layer.registry().metrics();
        metrics.socket_writes.fetch_add(1, Ordering::Relaxed);
        // Only a busy node needs the time; a quiet one forgets it and reads no clock.
        last_write = (!hub.pacing.gap().is_zero()).then(Instant::now);
    }
}

async fn close_for(sink: &mut SplitSink<WebSocket, Message>, stop: Stop) {
    let (code, reason) = match stop {
        Stop::Shutdown => (close_code::RESTARTING, "Server restarting; reconnect."),
        Stop::Lagging => (
            close_code::TRY_AGAIN,
            "You fell behind; reconnect to catch up.",
        ),
    };
    close(sink, code, reason).await;
}

async fn close(sink: &mut SplitSink<WebSocket, Message>, code: u16, reason: &'static str) {
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
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
