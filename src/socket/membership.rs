//! Which rooms a person is in, by their own choice: entering and creating groups, opening
//! conversations, leaving groups, hiding conversations, blocking people, and browsing the
//! public groups. Every new room a person takes on is checked against their limits before
//! anything is created, so a refused request changes nothing.

use std::sync::Arc;

use super::{ActionError, Entry, Socket, refuse};
use crate::chat::names::{GroupName, InputError, Username};
use crate::chat::protocol::{Swap, frame};
use crate::layer::{Event, Reply, user_group};
use crate::model::{Room, RoomKind, User};
use crate::store::now_ms;
use crate::views::{self, target};

/// Groups listed on one page of "Browse groups".
const BROWSE_PAGE: i64 = 20;
/// People listed under "Blocked people", at most (the most recently blocked).
const BLOCKED_LISTED: i64 = 200;
/// The window of the per-hour limits on new rooms.
const HOUR_MS: i64 = 3_600_000;

impl Socket {
    /// Enters a group, joining it first if need be, and creating it if the name is new.
    pub(super) async fn enter_group(&mut self, raw_name: &str) -> Result<(), ActionError> {
        let name = GroupName::parse(raw_name)?;
        let store = &self.hub.store;
        let existing = store.group_by_name(name.as_str()).await?;
        let member = match &existing {
            Some(room) => store
                .room_for_member(&room.id, &self.user.id)
                .await?
                .is_some(),
            None => false,
        };
        if !member {
            self.check_room_limit().await?;
        }
        if existing.is_none() {
            self.check_new_rooms(RoomKind::Group).await?;
        }
        let (room, created) = store
            .find_or_create_group(name.as_str(), &self.user)
            .await?;
        if created {
            tracing::info!(group = name.as_str(), by = %self.user.username, "group created");
        }
        if !member {
            self.hub.store.join_group(&room.id, &self.user.id).await?;
            // Only the new member hears of it: on each of their sockets, on every node.
            self.announce_room(&self.user.clone(), &room, None).await;
            self.refresh_listing(&room).await?;
        }
        // A member again, whatever another socket was told before.
        self.revoked.remove(&room.id);
        self.enter(Entry::group(room.clone(), true)).await?;
        if !member {
            let name = room.name.as_deref().unwrap_or_default();
            if created {
                self.send_notice(&format!("You created #{name}."));
            } else {
                self.send_notice(&format!("You joined #{name}."));
            }
        }
        Ok(())
    }

    /// Enters the group a link names: one that exists (joining it, as "Join" does), never
    /// a new one.
    pub(super) async fn open_group_link(&mut self, raw_name: &str) -> Result<(), ActionError> {
        let name = GroupName::parse(raw_name)?;
        if self.hub.store.group_by_name(name.as_str()).await?.is_none() {
            return refuse(format!("There is no group #{}.", name.as_str()));
        }
        self.enter_group(name.as_str()).await
    }

    /// Opens the conversation with a user, creating it on first use.
    pub(super) async fn enter_direct(&mut self, raw_name: &str) -> Result<(), ActionError> {
        let peer = self.user_named(raw_name).await?;
        if peer.id == self.user.id {
            return refuse("That is you: pick someone else to talk to.");
        }
        let (i_blocked, blocked_me) = self
            .hub
            .store
            .blocks_between(&self.user.id, &peer.id)
            .await?;
        if i_blocked {
            return Err(ActionError::Blocked(peer));
        }
        if blocked_me {
            return refuse(format!(
                "{} does not take messages from you.",
                peer.username
            ));
        }
        let existing = self.hub.store.find_direct(&self.user, &peer).await?;
        if existing.is_none() {
            self.check_room_limit().await?;
            self.check_new_rooms(RoomKind::Direct).await?;
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
            let me = self.user.clone();
            self.announce_room(&peer, &room, Some(&me)).await;
            self.announce_room(&me, &room, Some(&peer)).await;
        } else if self.hub.store.unhide_room(&room.id, &self.user.id).await? {
            let me = self.user.clone();
            self.announce_room(&me, &room, Some(&peer)).await;
        }
        // No block either way, as just checked.
        self.revoked.remove(&room.id);
        self.enter(Entry {
            room,
            peer: Some(peer),
            resume_after: None,
            mark_read: true,
        })
        .await?;
        Ok(())
    }

    /// Leaves a group: it leaves the sidebar on all of the user's sockets, and this one
    /// moves on if it was showing it.
    pub(super) async fn leave_group(&mut self, raw_name: &str) -> Result<(), ActionError> {
        let name = GroupName::parse(raw_name)?;
        let Some(room) = self.hub.store.group_by_name(name.as_str()).await? else {
            return refuse(format!("There is no group #{}.", name.as_str()));
        };
        if !self.hub.store.leave_group(&room.id, &self.user.id).await? {
            return refuse(format!("You are not in #{}.", name.as_str()));
        }
        self.remove_room(&self.user.id.clone(), &room).await;
        self.step_out_of(&room.id).await?;
        self.refresh_listing(&room).await?;
        self.send_notice(&format!("You left #{}.", name.as_str()));
        Ok(())
    }

    /// Takes a conversation out of the sidebar until a message comes in it.
    pub(super) async fn hide_conversation(&mut self, raw_name: &str) -> Result<(), ActionError> {
        let peer = self.user_named(raw_name).await?;
        let Some(room) = self.hub.store.find_direct(&self.user, &peer).await? else {
            return refuse(format!("You have no conversation with {}.", peer.username));
        };
        self.hub.store.hide_room(&room.id, &self.user.id).await?;
        let entry = views::direct_item(&room, &peer, 0, 0).into_string();
        self.hub
            .publish(
                &user_group(&self.user.id),
                Event::RoomHidden {
                    room: Arc::from(room.id.as_str()),
                    frame: frame(target::DIRECTS, Swap::BeforeEnd, &entry),
                },
            )
            .await;
        self.step_out_of(&room.id).await?;
        self.send_notice(&format!(
            "Your conversation with {} is hidden until one of you writes in it.",
            peer.username
        ));
        Ok(())
    }

    /// Blocks a user: neither can open the conversation or post in it until unblocked.
    pub(super) async fn block_user(&mut self, raw_name: &str) -> Result<(), ActionError> {
        let peer = self.user_named(raw_name).await?;
        if peer.id == self.user.id {
            return refuse("That is you.");
        }
        self.hub.store.block(&self.user.id, &peer.id).await?;
        if let Some(room) = self.hub.store.find_direct(&self.user, &peer).await? {
            for user in [&self.user.id.clone(), &peer.id] {
                self.remove_room(user, &room).await;
            }
            self.step_out_of(&room.id).await?;
        }
        tracing::info!(by = %self.user.username, blocked = %peer.username, "user blocked");
        self.send_notice(&format!(
            "You blocked {}: neither of you can open your conversation until you unblock \
             them (under \"Blocked people\" in the sidebar).",
            peer.username
        ));
        self.list_blocked().await?;
        Ok(())
    }

    pub(super) async fn unblock_user(&mut self, raw_name: &str) -> Result<(), ActionError> {
        let peer = self.user_named(raw_name).await?;
        if !self.hub.store.unblock(&self.user.id, &peer.id).await? {
            return refuse(format!("You had not blocked {}.", peer.username));
        }
        if let Some(room) = self.hub.store.find_direct(&self.user, &peer).await? {
            let (_, blocked_me) = self
                .hub
                .store
                .blocks_between(&self.user.id, &peer.id)
                .await?;
            // The conversation comes back for each of them who had not hidden it.
            let me = self.user.clone();
            for (owner, other) in [(&me, &peer), (&peer, &me)] {
                if !blocked_me && !self.hub.store.hidden_for(&room.id, &owner.id).await? {
                    self.announce_room(owner, &room, Some(other)).await;
                }
            }
        }
        self.send_notice(&format!("You unblocked {}.", peer.username));
        self.list_blocked().await?;
        Ok(())
    }

    /// The people the user blocked, each with a way to unblock, into the sidebar's list.
    pub(super) async fn list_blocked(&self) -> Result<(), ActionError> {
        let blocked = self
            .hub
            .store
            .blocked_by(&self.user.id, BLOCKED_LISTED)
            .await?;
        self.send(Reply::Frame(frame(
            target::BLOCKED_LIST,
            Swap::Inner,
            &views::blocked_people(&blocked).into_string(),
        )));
        Ok(())
    }

    /// Replaces the group's row in an open "Browse groups" dialog, after joining or leaving.
    async fn refresh_listing(&self, room: &Room) -> Result<(), ActionError> {
        let name = room.name.as_deref().unwrap_or_default();
        let listing = self
            .hub
            .store
            .browse_groups(&self.user.id, name, "", 1)
            .await?;
        if let Some(listing) = listing.first().filter(|l| l.room.id == room.id) {
            self.send(Reply::Frame(frame(
                &target::browse_row(&room.id),
                Swap::Outer,
                &views::group_listings(std::slice::from_ref(listing), false).into_string(),
            )));
        }
        Ok(())
    }

    /// One page of the public groups, with member counts, into the browse dialog.
    pub(super) async fn browse_groups(&self, query: &str, after: &str) -> Result<(), ActionError> {
        let parsed = |raw: &str| match raw.trim() {
            "" | "#" => Ok(String::new()),
            q => GroupName::parse(q).map(|n| n.as_str().to_owned()),
        };
        let (prefix, after) = match (parsed(query), parsed(after)) {
            (Ok(prefix), Ok(after)) => (prefix, after),
            (Err(e), _) | (_, Err(e)) => {
                // Said in the dialog, where the person is looking.
                self.send(Reply::Frames(vec![
                    frame(
                        target::BROWSE_RESULTS,
                        Swap::Inner,
                        &maud::html! { li.error role="alert" { (e.0) } }.into_string(),
                    ),
                    frame(
                        target::BROWSE_MORE,
                        Swap::Outer,
                        &views::browse_more("", None).into_string(),
                    ),
                ]));
                return Ok(());
            }
        };
        let mut page = self
            .hub
            .store
            .browse_groups(&self.user.id, &prefix, &after, BROWSE_PAGE + 1)
            .await?;
        let more = page.len() as i64 > BROWSE_PAGE;
        page.truncate(BROWSE_PAGE as usize);
        let next = more
            .then(|| page.last().and_then(|g| g.room.name.clone()))
            .flatten();
        let swap = if after.is_empty() {
            Swap::Inner
        } else {
            Swap::BeforeEnd
        };
        self.send(Reply::Frames(vec![
            frame(
                target::BROWSE_RESULTS,
                swap,
                &views::group_listings(&page, after.is_empty()).into_string(),
            ),
            frame(
                target::BROWSE_MORE,
                Swap::Outer,
                &views::browse_more(&prefix, next.as_deref()).into_string(),
            ),
        ]));
        Ok(())
    }

    /// The user a name means, or a refusal saying there is none.
    async fn user_named(&self, raw_name: &str) -> Result<User, ActionError> {
        if raw_name.trim().is_empty() {
            return refuse("Type a username.");
        }
        let shown: String = raw_name.chars().take(32).collect();
        let no_such_user = || InputError(format!("There is no user named \"{shown}\"."));
        let name = Username::parse(raw_name).map_err(|_| no_such_user())?;
        match self.hub.store.user_by_name(&name).await? {
            Some(user) => Ok(user),
            None => Err(no_such_user().into()),
        }
    }

    /// Refuses a new membership once the user chose as many rooms as allowed. Rooms
    /// others opened with them do not count: nobody can use up someone else's rooms.
    async fn check_room_limit(&self) -> Result<(), ActionError> {
        let max = self.hub.limits.max_rooms_per_user;
        if self.hub.store.chosen_room_count(&self.user.id).await? >= max {
            return refuse(format!(
                "You are in {max} rooms, the most allowed; leave one to join another."
            ));
        }
        Ok(())
    }

    /// Refuses creating a room of `kind` past the hourly limits: per account (counted in
    /// the database, so on every node) and, for groups, per address (on this node).
    async fn check_new_rooms(&self, kind: RoomKind) -> Result<(), ActionError> {
        let (per_hour, what) = match kind {
            RoomKind::Group => (self.hub.limits.new_groups_per_hour, "groups"),
            RoomKind::Direct => (self.hub.limits.new_conversations_per_hour, "conversations"),
        };
        let created = self
            .hub
            .store
            .rooms_created_since(&self.user.id, kind, now_ms() - HOUR_MS)
            .await?;
        let from_here = kind == RoomKind::Direct
            || self
                .hub
                .new_groups_by_address
                .spend(&self.address.to_string(), 1.0);
        if created >= per_hour || !from_here {
            return refuse(format!(
                "You can start {per_hour} new {what} an hour; try again later."
            ));
        }
        Ok(())
    }

    /// Tells `owner`'s sockets, on every node, to follow `room` and list it (with `peer`
    /// for a conversation).
    async fn announce_room(&self, owner: &User, room: &Room, peer: Option<&User>) {
        let (list, entry) = match peer {
            Some(peer) => (target::DIRECTS, views::direct_item(room, peer, 0, 0)),
            None => (target::GROUPS, views::group_item(room, 0, 0)),
        };
        self.hub
            .publish(
                &user_group(&owner.id),
                Event::RoomAdded {
                    room: Arc::from(room.id.as_str()),
                    frame: frame(list, Swap::BeforeEnd, &entry.into_string()),
                },
            )
            .await;
    }

    /// Tells `owner_id`'s sockets, on every node, that `room` is no longer theirs to use.
    async fn remove_room(&self, owner_id: &str, room: &Room) {
        self.hub
            .publish(
                &user_group(owner_id),
                Event::RoomRemoved {
                    room: Arc::from(room.id.as_str()),
                },
            )
            .await;
    }

    /// When this socket shows `room_id`, shows another of the user's rooms instead (`#hi`
    /// first), or none.
    pub(super) async fn step_out_of(&mut self, room_id: &str) -> Result<(), ActionError> {
        if self.active.as_ref().is_none_or(|a| a.room.id != room_id) {
            return Ok(());
        }
        let rooms = self.hub.store.rooms_of(&self.user.id).await?;
        let next = rooms
            .iter()
            .filter(|s| s.room.id != room_id && s.listed())
            .min_by_key(|s| {
                (
                    s.room.name.as_deref() != Some("hi"),
                    s.room.kind != RoomKind::Group,
                )
            })
            .cloned();
        match next {
            Some(next) => {
                // Read from the memberships just now, and not closed by a block.
                self.revoked.remove(&next.room.id);
                self.enter(Entry {
                    room: next.room,
                    peer: next.peer,
                    resume_after: None,
                    mark_read: next.unread > 0,
                })
                .await?
            }
            None => self.enter_nothing().await,
        }
        Ok(())
    }
}
