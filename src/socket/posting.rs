//! A socket's posts: checked, queued with the store, and answered once stored.
//!
//! A client that sends posts in a row does not wait for each to be stored before the next
//! is read: the next is queued while the ones before it are in the store's batch, up to
//! `MAX_IN_FLIGHT` of them. Posts to a room are stored, published and answered in the
//! order they were sent; any other action waits until the posts before it are answered.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::{ActionError, Socket, messages_frame, refuse};
use crate::chat::mentions;
use crate::chat::names::{InputError, MessageText};
use crate::chat::protocol::{Swap, frame};
use crate::layer::{Event, Reply, room_group};
use crate::model::{Quoted, StoredMessage};
use crate::store::{AfterCommit, Draft, Posted, Queued, StoreResult};
use crate::views::target;

/// Posts of one socket being stored at once, at most; past it the socket reads nothing
/// more until the oldest is answered. Enough to keep a fast client's posts flowing while
/// a batch commits, and a bound on what one socket can have queued with the store.
pub(super) const MAX_IN_FLIGHT: usize = 32;

/// A socket's posts queued with the store and not yet answered, oldest first.
#[derive(Default)]
pub(super) struct InFlight(VecDeque<Pending>);

/// A queued post and what its answer needs to know.
pub(super) struct Pending {
    queued: Queued,
    client_id: Option<String>,
    /// Posted to a room this socket does not show.
    elsewhere: bool,
}

/// A post's outcome, ready to be answered.
pub(super) struct Answered {
    outcome: StoreResult<Posted>,
    client_id: Option<String>,
    elsewhere: bool,
}

impl InFlight {
    pub(super) fn push(&mut self, pending: Pending) {
        self.0.push_back(pending);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn is_full(&self) -> bool {
        self.0.len() >= MAX_IN_FLIGHT
    }

    /// The oldest post's outcome, once it has one; never, while there is none in flight.
    /// Cancel-safe: a post leaves only with the outcome returned.
    pub(super) async fn next(&mut self) -> Answered {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// `next`, polled by hand. Pending with no waker kept while nothing is in flight: the
    /// caller waits on something else too.
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Answered> {
        let Some(oldest) = self.0.front_mut() else {
            return Poll::Pending;
        };
        let outcome = std::task::ready!(Pin::new(&mut oldest.queued).poll(cx));
        let Some(done) = self.0.pop_front() else {
            return Poll::Pending;
        };
        Poll::Ready(Answered {
            outcome,
            client_id: done.client_id,
            elsewhere: done.elsewhere,
        })
    }
}

/// Where a post goes: to a room other than the one shown (`room_id`), in reply to a
/// message (`reply_to`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Addressed<'a> {
    pub room_id: Option<&'a str>,
    pub reply_to: Option<&'a str>,
}

impl Socket {
    /// Checks a post and queues it with the store; its answer comes with `answer_post`.
    pub(super) async fn queue_post(
        &mut self,
        raw: &str,
        client_id: Option<String>,
        to: Addressed<'_>,
    ) -> Result<Pending, ActionError> {
        match self.check_and_queue(raw, client_id.as_deref(), to).await {
            Ok((queued, elsewhere)) => Ok(Pending {
                queued,
                client_id,
                elsewhere,
            }),
            Err(e) => Err(refused(e, client_id)),
        }
    }

    async fn check_and_queue(
        &mut self,
        raw: &str,
        client_id: Option<&str>,
        to: Addressed<'_>,
    ) -> Result<(Queued, bool), ActionError> {
        // The room shown, or another the user is in (a message written there while the
        // connection was down, sent once it is back).
        let (room_id, elsewhere) = match to.room_id {
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
        let replying_to = match to.reply_to {
            None => None,
            Some(id) => Some(self.quote(id, &room_id).await?),
        };
        // The people of the room it names, read only for a message that names anyone.
        let named = mentions::named(text.as_str());
        let mut mentioned = Vec::new();
        if !named.is_empty() {
            mentioned = self.hub.store.members_named(&room_id, &named).await?;
            mentioned.retain(|u| u.id != self.user.id);
        }
        // Store before send: nothing is published (or acknowledged) until the row commits.
        // The store's writer runs the publication once the batch holding this message has
        // committed, in seq order, whether or not this socket is still here to hear the
        // answer: a socket that dies mid-post cannot leave a stored message unpublished.
        let hub = self.hub.clone();
        let group = room_group(&room_id);
        let publish: AfterCommit = Box::new(move |message: &StoredMessage| {
            let new_message = |message: &StoredMessage| Event::Message {
                room: Arc::from(message.room_id.as_str()),
                seq: message.seq,
                frame: messages_frame(std::slice::from_ref(message), Swap::BeforeEnd),
            };
            let Some(quoted) = message.replying_to.as_deref() else {
                let event = new_message(message);
                return Box::pin(async move { hub.publish(&group, event).await });
            };
            // A reply quotes what it answers as it was checked; deleted since, the quote
            // must not carry its text (a deletion after this is published after it, and
            // pages apply it to quotes too).
            let (mut message, quoted) = (message.clone(), quoted.id.clone());
            Box::pin(async move {
                if hub.store.is_deleted(&quoted).await.unwrap_or(true)
                    && let Some(q) = message.replying_to.as_mut()
                {
                    q.deleted = true;
                    q.snippet.clear();
                }
                hub.publish(&group, new_message(&message)).await
            })
        });
        let draft = Draft {
            room_id: &room_id,
            author: &self.user,
            body: text.as_str(),
            client_id,
            replying_to: replying_to.as_ref(),
            mentions: &mentioned,
        };
        match self.hub.store.queue_message_then(draft, publish).await {
            Ok(queued) => Ok((queued, elsewhere)),
            Err(e) => Err(not_stored(e)),
        }
    }

    /// The quote of message `id`, which a post to `room_id` replies to: a message of that
    /// room, not deleted.
    async fn quote(&self, id: &str, room_id: &str) -> Result<Quoted, ActionError> {
        let original = self
            .message_in_reach(id)
            .await?
            .filter(|m| m.room_id == room_id);
        match original {
            None => refuse("There is no such message in this room to reply to."),
            Some(m) if m.deleted => {
                refuse("That message was deleted: there is nothing to reply to.")
            }
            Some(m) => Ok(Quoted::of(&m)),
        }
    }

    /// Answers a stored post where the publication does not (the sender of a post to
    /// another room, or of a repeat), and a post that was not stored.
    pub(super) fn answer_post(&self, answered: Answered) {
        let Answered {
            outcome,
            client_id,
            elsewhere,
        } = answered;
        let posted = match outcome {
            Ok(posted) => posted,
            Err(e) => return self.report(refused(not_stored(e), client_id)),
        };
        if let (true, Some(client_id)) = (elsewhere, &client_id) {
            // Its article goes to that room's viewers, not to this socket, which shows
            // another room.
            return self.told_stored(client_id);
        }
        // Posted before (a retry whose first answer was lost): stored and published then.
        // The sender is answered as the first time, with the same article (which replaces
        // itself on a page that has it), if it still shows that room.
        let Posted {
            message,
            repeat: true,
        } = posted
        else {
            return;
        };
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.room.id == message.room_id)
        {
            let article = messages_frame(std::slice::from_ref(&message), Swap::BeforeEnd);
            self.send(Reply::Frame(article));
        } else if let Some(client_id) = client_id {
            // First posted in a room this socket does not show.
            self.told_stored(&client_id);
        }
    }

    /// Tells the sender its post `client_id` is stored, where no article of it comes.
    fn told_stored(&self, client_id: &str) {
        let sent = frame(&target::pending(client_id), Swap::Remove, "");
        self.send(Reply::Frame(sent));
    }

    /// Waits for every post in flight and answers each.
    pub(super) async fn settle(&self, posts: &mut InFlight) {
        while !posts.is_empty() {
            let answered = posts.next().await;
            self.answer_post(answered);
        }
    }
}

fn not_stored(e: crate::store::StoreError) -> ActionError {
    tracing::error!(error = %e, "message not stored");
    ActionError::Busy(InputError(
        "Your message could not be stored, so it was not sent. Please try again.".into(),
    ))
}

/// A refused post is said with its client id, when it has one, so the page can show which
/// one was not sent, and send it again by itself when that may work.
fn refused(error: ActionError, client_id: Option<String>) -> ActionError {
    match (error, client_id) {
        (ActionError::Input(reason), Some(client_id)) => ActionError::PostRefused {
            reason,
            client_id,
            retry: false,
        },
        (ActionError::Busy(reason), Some(client_id)) => ActionError::PostRefused {
            reason,
            client_id,
            retry: true,
        },
        (error, _) => error,
    }
}
