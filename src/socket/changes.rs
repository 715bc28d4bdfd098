//! A socket's changes to messages already posted: edits and deletions, by their author
//! only, and reactions, by any member. Each is stored with the room's next seq (the message's new rev) before it is
//! published, so catch-up after a reconnect replays it like a new message; its frame
//! replaces the article in place.

use std::sync::Arc;

use super::{ActionError, Socket, refuse};
use crate::chat::names::{InputError, MessageText};
use crate::chat::protocol::{Swap, frame};
use crate::chat::reactions::{Emoji, MAX_KINDS};
use crate::layer::{Event, room_group};
use crate::model::StoredMessage;
use crate::store::{Change, Reacted};
use crate::views::{self, target};

impl Socket {
    pub(super) async fn change_message(
        &mut self,
        message_id: &str,
        change: Change<'_>,
    ) -> Result<(), ActionError> {
        let verb = match change {
            Change::Edit(_) => "edit",
            Change::Delete => "delete",
        };
        let Some(message) = self.message_in_reach(message_id).await? else {
            return refuse("There is no such message.");
        };
        if message.author.id != self.user.id {
            return refuse(format!("You can only {verb} your own messages."));
        }
        if message.deleted {
            return refuse("That message was deleted.");
        }
        let text;
        let change = match change {
            Change::Edit(raw) => {
                text = MessageText::parse(raw, self.hub.limits.max_message_chars)?;
                if text.as_str() == message.body {
                    // Nothing changes: nothing is stored or sent.
                    return Ok(());
                }
                Change::Edit(text.as_str())
            }
            Change::Delete => Change::Delete,
        };
        self.changes_allowed()?;
        let Some(changed) = self
            .hub
            .store
            .change_message(&message.room_id, message_id, &self.user.id, change)
            .await?
        else {
            // Deleted on another socket meanwhile.
            return refuse("That message was deleted.");
        };
        self.publish_change(&changed);
        Ok(())
    }

    /// Adds the user's reaction to a message in a room of theirs, or takes it back.
    pub(super) async fn react(&mut self, message_id: &str, emoji: &str) -> Result<(), ActionError> {
        let emoji = Emoji::parse(emoji)?;
        let Some(message) = self.message_in_reach(message_id).await? else {
            return refuse("There is no such message.");
        };
        if message.deleted {
            return refuse("That message was deleted.");
        }
        self.changes_allowed()?;
        let reacted = self
            .hub
            .store
            .toggle_reaction(&message.room_id, message_id, &self.user.id, emoji.as_str())
            .await?;
        match reacted {
            Reacted::Changed(changed) => {
                self.publish_change(&changed);
                Ok(())
            }
            Reacted::NoMessage => refuse("That message was deleted."),
            Reacted::Full => refuse(format!(
                "A message takes at most {MAX_KINDS} different reactions: add one of those."
            )),
        }
    }

    /// Message `message_id` if it is in a room of the user's they may still use. A message
    /// elsewhere is no message at all to them: the same answer as for an id that names
    /// nothing.
    pub(super) async fn message_in_reach(
        &self,
        message_id: &str,
    ) -> Result<Option<StoredMessage>, ActionError> {
        let found = self
            .hub
            .store
            .message_for_member(message_id, &self.user.id)
            .await?;
        Ok(found.filter(|m| !self.revoked.contains(&m.room_id)))
    }

    /// Changes share the posting rate: each is a write every member of the room receives.
    fn changes_allowed(&self) -> Result<(), ActionError> {
        if self.hub.rate.allow(&self.user.id) {
            Ok(())
        } else {
            Err(ActionError::Busy(InputError(
                "You are changing messages too fast; wait a moment and try again.".into(),
            )))
        }
    }

    /// Sends a stored change to every member: the message's article in its new state,
    /// which replaces the old one where it is shown.
    fn publish_change(&self, changed: &StoredMessage) {
        let event = Event::Changed {
            room: Arc::from(changed.room_id.as_str()),
            seq: changed.rev,
            frame: frame(
                &target::message(&changed.id),
                Swap::Outer,
                &views::message(changed).into_string(),
            ),
        };
        // Published by a task of its own: stored, a change is sent even if this socket's
        // task ends meanwhile (its writer gone, the reader is dropped mid-action).
        let hub = self.hub.clone();
        let group = room_group(&changed.room_id);
        tokio::spawn(async move { hub.publish(&group, event).await });
    }
}
