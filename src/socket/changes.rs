//! A socket's changes to messages already posted: edits and deletions, by their author
//! only. Each is stored with the room's next seq (the message's new rev) before it is
//! published, so catch-up after a reconnect replays it like a new message; its frame
//! replaces the article in place.

use std::sync::Arc;

use super::{ActionError, Socket, refuse};
use crate::chat::names::{InputError, MessageText};
use crate::chat::protocol::{Swap, frame};
use crate::layer::{Event, room_group};
use crate::store::Change;
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
        // A message in a room the user is not in is no message at all to them: the same
        // answer as for an id that names nothing.
        let found = self
            .hub
            .store
            .message_for_member(message_id, &self.user.id)
            .await?;
        let Some(message) = found.filter(|m| !self.revoked.contains(&m.room_id)) else {
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
        if !self.hub.rate.allow(&self.user.id) {
            return Err(ActionError::Busy(InputError(
                "You are changing messages too fast; wait a moment and try again.".into(),
            )));
        }
        let Some(changed) = self
            .hub
            .store
            .change_message(&message.room_id, message_id, &self.user.id, change)
            .await?
        else {
            // Deleted on another socket meanwhile.
            return refuse("That message was deleted.");
        };
        let event = Event::Changed {
            room: Arc::from(changed.room_id.as_str()),
            seq: changed.rev,
            frame: frame(
                &target::message(&changed.id),
                Swap::Outer,
                &views::message(&changed).into_string(),
            ),
        };
        // Published by a task of its own: stored, a change is sent even if this socket's
        // task ends meanwhile (its writer gone, the reader is dropped mid-action).
        let hub = self.hub.clone();
        let group = room_group(&changed.room_id);
        tokio::spawn(async move { hub.publish(&group, event).await });
        Ok(())
    }
}
