//! Message history. A message's position in its room is `seq`, assigned in the transaction
//! that stores it; every page and catch-up query walks `(room_id, seq)` on its unique index.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{AfterCommit, Queued, Store, StoreResult};
use crate::model::{StoredMessage, User};

/// A message to be posted.
#[derive(Debug, Clone, Copy)]
pub struct Draft<'a> {
    pub room_id: &'a str,
    pub author: &'a User,
    pub body: &'a str,
    /// The id the author's client gave it, so that posting it again stores nothing new.
    pub client_id: Option<&'a str>,
}

/// What became of a posted draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub message: StoredMessage,
    /// The author had posted it before (same `client_id`): this is that message, and
    /// nothing new was stored or published.
    pub repeat: bool,
}

pub(super) fn message_from_row(row: &AnyRow) -> Result<StoredMessage, sqlx::Error> {
    Ok(StoredMessage {
        id: row.try_get("id")?,
        room_id: row.try_get("room_id")?,
        seq: row.try_get("seq")?,
        author: User {
            id: row.try_get("author_id")?,
            username: row.try_get("username")?,
        },
        body: row.try_get("body")?,
        created_at_ms: row.try_get("created_at")?,
        client_id: row.try_get("client_id")?,
    })
}

pub(super) const SELECT_MESSAGES: &str = "SELECT m.id, m.room_id, m.seq, m.author_id, \
     u.username, m.body, m.created_at, m.client_id FROM messages m JOIN users u ON u.id = m.author_id";

impl Store {
    /// Stores a message and returns it with its sequence number. Only after this returns
    /// may the message be acknowledged or published. Messages posted at the same moment
    /// share a transaction (see `batch`).
    pub async fn post_message(
        &self,
        room_id: &str,
        author: &User,
        body: &str,
    ) -> StoreResult<StoredMessage> {
        let draft = Draft {
            room_id,
            author,
            body,
            client_id: None,
        };
        Ok(self.batcher.queue(draft, None).await?.await?.message)
    }

    /// Like `post_message`, and runs `then` once the message is committed, before its
    /// outcome is ready: in seq order among the room's messages, and to completion even
    /// when nobody waits for the outcome. This is how a message is published exactly when
    /// it is stored.
    ///
    /// Returns once the post is queued, so that a client's posts can be stored while it
    /// sends the next: drafts queued one after another to a room keep their order.
    ///
    /// A draft whose `client_id` its author already used is not stored again, and `then`
    /// does not run: the outcome is the message stored the first time, on whichever node.
    pub async fn queue_message_then(
        &self,
        draft: Draft<'_>,
        then: AfterCommit,
    ) -> StoreResult<Queued> {
        self.batcher.queue(draft, Some(then)).await
    }

    /// Posts queued with this node's writers or in a batch not yet committed.
    pub fn posts_waiting(&self) -> usize {
        self.batcher.waiting()
    }

    /// The room's newest seq, or None when there is no such room.
    pub async fn last_seq(&self, room_id: &str) -> StoreResult<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT last_seq FROM rooms WHERE id = $1")
            .bind(room_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(row.map(|(seq,)| seq))
    }

    /// The newest `limit` messages, oldest first.
    pub async fn latest_messages(
        &self,
        room_id: &str,
        limit: i64,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.messages_before(room_id, i64::MAX, limit).await
    }

    /// Up to `limit` messages just before `seq`, oldest first (one page of older history).
    pub async fn messages_before(
        &self,
        room_id: &str,
        seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredMessage>> {
        let mut page = self
            .messages_where(room_id, "m.seq < $2 ORDER BY m.seq DESC", seq, limit)
            .await?;
        page.reverse();
        Ok(page)
    }

    /// Up to `limit` messages just after `seq`, oldest first (catch-up after a reconnect).
    pub async fn messages_after(
        &self,
        room_id: &str,
        seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.messages_where(room_id, "m.seq > $2 ORDER BY m.seq ASC", seq, limit)
            .await
    }

    /// One keyset page of a room's messages: `order` bounds and orders by seq against `$2`.
    async fn messages_where(
        &self,
        room_id: &str,
        order: &str,
        seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredMessage>> {
        let rows = sqlx::query(&format!(
            "{SELECT_MESSAGES} WHERE m.room_id = $1 AND {order} LIMIT $3"
        ))
        .bind(room_id)
        .bind(seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        rows.iter()
            .map(message_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.failed(e))
    }
}
