//! A socket's actions: each frame the client sends, parsed, weighed against the user's
//! budget, carried out, and answered (with an error the user can act on when refused).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::posting::{Addressed, InFlight};
use super::rooms::CatchUp;
use super::{ActionError, ActiveRoom, Entry, Socket, messages_frame, refuse};
use crate::chat::protocol::{Action, Swap, frame};
use crate::chat::rate::{BYTES_PER_UNIT, MESSAGES_PER_UNIT, action_cost};
use crate::layer::{Event, Reply};
use crate::model::StoredMessage;
use crate::store::Change;
use crate::views::{self, target};

/// A socket announces typing at most this often.
const TYPING_EVERY: Duration = Duration::from_secs(2);

impl Socket {
    /// Carries out the action `text` holds. A post is queued and joins `posts`; any other
    /// action first waits for the posts before it to be answered, so that it sees (and its
    /// answer follows) what they did.
    pub(super) async fn handle(&mut self, text: &str, posts: &mut InFlight) {
        let action = Action::parse(text);
        if !matches!(action, Ok(Action::NewMessage { .. })) {
            self.settle(posts).await;
        }
        let result = match action {
            Ok(action) => Box::pin(self.act(action, posts)).await,
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
    pub(super) fn report(&self, error: ActionError) {
        match error {
            ActionError::Input(e) | ActionError::Busy(e) => self.send_error(&e.0),
            ActionError::PostRefused {
                reason,
                client_id,
                retry,
            } => self.send(Reply::Frame(frame(
                target::ERRORS,
                Swap::Inner,
                &views::post_refused(&reason.0, &client_id, retry).into_string(),
            ))),
            ActionError::Blocked(peer) => self.send(Reply::Frame(frame(
                target::ERRORS,
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
    pub(super) fn usable_room(&self) -> Result<&ActiveRoom, ActionError> {
        match &self.active {
            None => refuse("Enter a room first."),
            Some(active) if self.revoked.contains(&active.room.id) => {
                refuse("You can no longer use this room.")
            }
            Some(active) => Ok(active),
        }
    }

    async fn act(&mut self, action: Action, posts: &mut InFlight) -> Result<(), ActionError> {
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
                reply_to,
            } => {
                let to = Addressed {
                    room_id: room_id.as_deref(),
                    reply_to: reply_to.as_deref(),
                };
                let queued = self.queue_post(&text, client_id, to).await?;
                posts.push(queued);
                Ok(())
            }
            Action::EditMessage { message_id, text } => {
                self.change_message(&message_id, Change::Edit(&text)).await
            }
            Action::DeleteMessage { message_id } => {
                self.change_message(&message_id, Change::Delete).await
            }
            Action::React { message_id, emoji } => self.react(&message_id, &emoji).await,
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
            Action::Search { query, before } => self.search(&query, before.as_deref()).await,
        }
    }

    pub(super) async fn load_older(&self, before_seq: i64) -> Result<(), ActionError> {
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
                target::LOAD_OLDER,
                Swap::Outer,
                &views::load_older(views::older_after_page(&page)).into_string(),
            ),
        ]));
        Ok(())
    }

    pub(super) async fn typing(&mut self) {
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
                target::TYPING,
                Swap::Inner,
                &views::typing(&self.user).into_string(),
            ),
        };
        let group = active.group.clone();
        self.last_typing = Some(Instant::now());
        self.hub.publish(&group, event).await;
    }

    /// Charges the user's budget for `messages` read from history: by their count, or by
    /// their size where they are long (a page of 4,000-character messages is a megabyte).
    pub(super) fn charge_read<'a>(&self, messages: impl IntoIterator<Item = &'a StoredMessage>) {
        let (count, bytes) = messages
            .into_iter()
            .fold((0, 0), |(n, b), m| (n + 1, b + m.body.len()));
        self.charge_counted(count, bytes);
    }

    /// Charges reading `count` messages of `bytes` of text in all.
    pub(super) fn charge_counted(&self, count: usize, bytes: usize) {
        let units = (count as f64 / MESSAGES_PER_UNIT).max(bytes as f64 / BYTES_PER_UNIT);
        self.hub.budget.charge(&self.user.id, units);
    }
}
