//! Which room a socket shows: the first one when it opens (resumed, named by the page's
//! address, or the usual one), entering another, leaving one, and catching up on what a
//! client missed, within bounds whatever the room's history.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::{ActionError, ActiveRoom, Entry, Named, Opening, Socket};
use crate::chat::protocol::{Swap, frame, frame_around, json_escaped};
use crate::hub::Page;
use crate::layer::{LOBBY, Reply, room_group, user_group};
use crate::model::RoomKind;
use crate::store::StoreError;
use crate::views::{self, target};

/// What a catch-up found.
pub(super) enum CatchUp {
    /// The client missed the messages after its position through `last`, at most
    /// `catch_up_limit` of them (see `Socket::send_missed`).
    Missed { last: i64 },
    /// The client is further behind than that (or names a position the room never had):
    /// it is shown the room afresh. `missed` is how many messages it did not see, when known.
    TooFar { missed: Option<i64> },
}

/// What entering the room a page's address names costs (as `Change group` does).
const ROOM_BY_NAME_COST: f64 = 2.0;

impl Socket {
    /// Joins the socket's groups, announces the user, and shows the first room.
    ///
    /// The rooms were read with the session, before the handshake finished: a conversation
    /// opened with this user between that read and the joins below is announced to a group
    /// this socket has not joined yet, and shows up at its next connect. (Reading the rooms
    /// here, before the joins, left the same gap; the handshake only widens it.)
    pub(super) async fn start(&mut self, opening: Box<Opening>) -> Result<(), StoreError> {
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
                let entry = views::direct_item(&summary.room, peer, 0, 0).into_string();
                hidden.insert(
                    Arc::from(summary.room.id.as_str()),
                    frame(target::DIRECTS, Swap::BeforeEnd, &entry),
                );
            }
        }
        futures_util::future::join_all(joins).await;
        self.send(Reply::Rooms {
            // Only the rooms with something unread: an idle socket then holds no map at all,
            // where an entry per room (a string and a table slot each) would be ~0.5 KB of it.
            unread: rooms
                .iter()
                .filter(|s| (s.unread, s.mentioned) != (0, 0))
                .map(|s| (s.room.id.clone(), (s.unread, s.mentioned)))
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
                target::LOGGED_USER,
                Swap::Inner,
                &maud::html! { (self.user.username) }.into_string(),
            ),
            frame_around(target::ASIDE, Swap::Inner, before, &people, after),
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
        // Costs what changing rooms does: a page opened at an address, again and again,
        // is changing rooms.
        if let (None, Some(named)) = (resumed, resume.named)
            && self.hub.budget.spend(&self.user.id, ROOM_BY_NAME_COST)
        {
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

    /// Shows no room: the user is in none (or left the last one).
    pub(super) async fn enter_nothing(&mut self) {
        if let Some(previous) = self.active.take() {
            self.leave(&previous).await;
        }
        self.send(Reply::NoRoom(vec![
            frame(target::ROOM_TITLE, Swap::Inner, ""),
            frame(target::ROOM_MEMBERS, Swap::Inner, ""),
            frame(target::ROOM_MEMBERS_MORE, Swap::Inner, ""),
            frame(target::ROOM_ACTIONS, Swap::Inner, ""),
            frame(target::HISTORY_CONTROLS, Swap::Inner, ""),
            frame(
                target::MESSAGES,
                Swap::Inner,
                &views::no_room().into_string(),
            ),
        ]));
    }

    /// When the room shown is one the user may no longer use, shows another, saying why.
    pub(super) async fn step_out_of_revoked(&mut self) -> Result<(), StoreError> {
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

    /// Makes `room` the active one: presence moves, and the room's header, members and
    /// history (or, when resuming, what was missed) replace the old room's.
    pub(super) async fn enter(&mut self, entry: Entry) -> Result<(), StoreError> {
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
    pub(super) async fn show_room(
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
                target::ROOM_TITLE,
                Swap::Inner,
                &views::room_title_markup(&room, &title).into_string(),
            ),
            self.hub.members_frame(&room.id, &members.listed),
            frame(
                target::ROOM_MEMBERS_MORE,
                Swap::Inner,
                &views::people_more(members.more),
            ),
            frame(&target::unread(&room.id), Swap::Inner, ""),
            frame(&target::mentions(&room.id), Swap::Inner, ""),
            frame(target::TYPING, Swap::Inner, ""),
            frame(
                target::ROOM_ACTIONS,
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
                let page = self.latest_page(&room.id).await?;
                self.charge_counted(page.count, page.bytes);
                frames.push(frame(
                    target::HISTORY_CONTROLS,
                    Swap::Inner,
                    &views::history_controls(page.older, skipped).into_string(),
                ));
                frames.push(page.frame.clone());
                page.through
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

    /// The room's latest page: the one the node keeps, while nothing in the room changed
    /// since it was read (see `hub::pages`), else read now, and kept.
    async fn latest_page(&self, room_id: &str) -> Result<Arc<Page>, StoreError> {
        // Before the store is read: a change delivered meanwhile makes what is read stale.
        let group = room_group(room_id);
        let registry = self.hub.layer.registry();
        let stamp = registry.stamp(&group);
        if let Some(page) = stamp.and_then(|stamp| self.hub.pages.get(room_id, stamp)) {
            return Ok(page);
        }
        let since = Instant::now();
        let read = self
            .hub
            .store
            .latest_page(room_id, views::PAGE_SIZE)
            .await?;
        let history = read.messages;
        let page = Arc::new(Page {
            through: read.through,
            frame: frame(
                target::MESSAGES,
                Swap::Inner,
                &views::messages(&history).into_string(),
            ),
            older: views::older_after_page(&history),
            count: history.len(),
            bytes: history.iter().map(|m| m.body.len()).sum(),
        });
        // Not when a change came meanwhile: the page kept for it, if any, is newer.
        if let Some(stamp) = stamp.filter(|&stamp| registry.stamp(&group) == Some(stamp)) {
            self.hub.pages.keep(room_id, stamp, since, page.clone());
        }
        Ok(page)
    }

    /// Presence and read position when the socket leaves a room (or closes).
    pub(super) async fn leave(&self, previous: &ActiveRoom) {
        self.leave_presence(&previous.room.id).await;
        if let Err(e) = self
            .hub
            .store
            .mark_left_read(&previous.room.id, &self.user.id)
            .await
        {
            tracing::warn!(error = %e, "could not record read position");
        }
    }

    /// Takes the socket out of `room_id`'s presence, telling the room if that shows.
    pub(super) async fn leave_presence(&self, room_id: &str) {
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
    pub(super) async fn catch_up(
        &self,
        room_id: &str,
        after_seq: i64,
    ) -> Result<CatchUp, StoreError> {
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
    pub(super) async fn send_missed(
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
                .changes_after(room, after, views::PAGE_SIZE)
                .await?;
            if page.messages.is_empty() {
                break;
            }
            self.charge_read(&page.messages);
            let through = page.through;
            self.send(Reply::Missed {
                room: room.clone(),
                messages: page.messages,
                through,
            });
            after = through;
        }
        Ok(())
    }
}
