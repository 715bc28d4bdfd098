//! Message history. A message's position in its room is `seq`, assigned in the transaction
//! that stores it; every page and catch-up query walks `(room_id, seq)` on its unique index.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::columns::Columns;
use super::{AfterCommit, Queued, Store, StoreResult};
use crate::chat::mentions::MAX_MENTIONED;
use crate::chat::names::name_key;
use crate::model::{Quoted, StoredMessage, User};

/// A message to be posted.
#[derive(Debug, Clone, Copy)]
pub struct Draft<'a> {
    pub room_id: &'a str,
    pub author: &'a User,
    pub body: &'a str,
    /// The id the author's client gave it, so that posting it again stores nothing new.
    pub client_id: Option<&'a str>,
    /// The message it replies to, in the same room.
    pub replying_to: Option<&'a Quoted>,
    /// The people of the room it mentions.
    pub mentions: &'a [User],
}

/// What became of a posted draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub message: StoredMessage,
    /// The author had posted it before (same `client_id`): this is that message, and
    /// nothing new was stored or published.
    pub repeat: bool,
}

pub(super) fn message_from_row<R: Columns>(row: &R) -> Result<StoredMessage, R::Error> {
    Ok(StoredMessage {
        id: row.text("id")?,
        room_id: row.text("room_id")?,
        seq: row.int("seq")?,
        author: User {
            id: row.text("author_id")?,
            username: row.text("username")?,
        },
        body: row.text("body")?,
        created_at_ms: row.int("created_at")?,
        client_id: row.maybe_text("client_id")?,
        rev: row.int("rev")?,
        edited_at_ms: row.maybe_int("edited_at")?,
        deleted: row.maybe_int("deleted_at")?.is_some(),
        reactions: super::reactions::from_column(row.maybe_text("reactions")?),
        replying_to: quoted_from_row(row)?,
        mentions: from_json_column(row.maybe_text("mentions")?)
            .into_iter()
            .map(Person::user)
            .collect(),
    })
}

/// A list kept as JSON in a column, NULL for none: the reactions and the people a message
/// mentions. Unreadable reads as none (only this module writes them, so unreadable means a
/// bug, not a reason to lose the message).
pub(super) fn from_json_column<T: serde::de::DeserializeOwned>(column: Option<String>) -> Vec<T> {
    let Some(json) = column else {
        return Vec::new();
    };
    serde_json::from_str(&json).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "unreadable JSON column");
        Vec::new()
    })
}

pub(super) fn to_json_column<T: serde::Serialize>(list: &[T]) -> Option<String> {
    if list.is_empty() {
        return None;
    }
    serde_json::to_string(list).ok()
}

/// People as the JSON columns keep them: `[user id, username]`.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Person(String, String);

impl Person {
    pub(super) fn of(user: &User) -> Person {
        Person(user.id.clone(), user.username.clone())
    }

    pub(super) fn user(self) -> User {
        User {
            id: self.0,
            username: self.1,
        }
    }
}

/// The quote of the message a reply answers; `None` for a message that is no reply, or
/// whose original is gone (its room purged with it, so never in practice).
fn quoted_from_row<R: Columns>(row: &R) -> Result<Option<Box<Quoted>>, R::Error> {
    let Some(id) = row.maybe_text("reply_to")? else {
        return Ok(None);
    };
    let Some(author) = row.maybe_text("quoted_author")? else {
        return Ok(None);
    };
    Ok(Some(Box::new(Quoted {
        id,
        author,
        snippet: row.maybe_text("quoted_body")?.unwrap_or_default(),
        deleted: row.maybe_int("quoted_deleted")?.is_some(),
    })))
}

/// A page of messages and how far it accounts for the room's changes (see
/// `Store::changes_after`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub messages: Vec<StoredMessage>,
    pub through: i64,
}

/// What an author does to a message of theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// New text.
    Edit(&'a str),
    /// Gone: the text is erased and the message shows as deleted.
    Delete,
}

/// The room's seq read with a page (in the same statement, so as of the same moment).
fn room_seq(row: Option<&AnyRow>) -> Result<i64, sqlx::Error> {
    row.map_or(Ok(0), |row| row.try_get("room_seq"))
}

/// A message's columns and where they come from, shared by the selects below.
/// A reply's quote comes from the message it answers, cut to `Quoted::SNIPPET_CHARS` (120).
macro_rules! select_messages {
    ($extra:literal) => {
        concat!(
            "SELECT m.id, m.room_id, m.seq, m.author_id, u.username, m.body, m.created_at, \
             m.client_id, m.rev, m.edited_at, m.deleted_at, m.reactions, m.reply_to, m.mentions, \
             qu.username AS quoted_author, SUBSTR(q.body, 1, 120) AS quoted_body, \
             q.deleted_at AS quoted_deleted",
            $extra,
            " FROM messages m JOIN users u ON u.id = m.author_id \
             LEFT JOIN messages q ON q.id = m.reply_to \
             LEFT JOIN users qu ON qu.id = q.author_id"
        )
    };
}

pub(super) const SELECT_MESSAGES: &str = select_messages!("");

/// `SELECT_MESSAGES` with the room's seq as `room_seq` (`$1` is the room).
const SELECT_MESSAGES_WITH_ROOM_SEQ: &str =
    select_messages!(", (SELECT last_seq FROM rooms WHERE id = $1) AS room_seq");

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
            replying_to: None,
            mentions: &[],
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

    /// The newest `limit` messages, oldest first, and the room's seq as they were read:
    /// every change through it is in them (or concerns older messages).
    pub async fn latest_page(&self, room_id: &str, limit: i64) -> StoreResult<Page> {
        let rows = self
            .rows_where(
                SELECT_MESSAGES_WITH_ROOM_SEQ,
                room_id,
                "m.seq < $2 ORDER BY m.seq DESC",
                i64::MAX,
                limit,
            )
            .await?;
        let through = room_seq(rows.first()).map_err(|e| self.failed(e))?;
        let mut messages = self.messages_of(&rows)?;
        messages.reverse();
        Ok(Page { messages, through })
    }

    /// What changed in the room after seq `after`, up to `limit` messages in rev order:
    /// new messages, and edited or deleted ones in their current state (catch-up after a
    /// reconnect). `through` says up to which seq every change is accounted for.
    pub async fn changes_after(&self, room_id: &str, after: i64, limit: i64) -> StoreResult<Page> {
        let rows = self
            .rows_where(
                SELECT_MESSAGES_WITH_ROOM_SEQ,
                room_id,
                "m.rev > $2 ORDER BY m.rev ASC",
                after,
                limit,
            )
            .await?;
        let messages = self.messages_of(&rows)?;
        // Every change takes a seq and leaves its message's rev at least as high: with no
        // message changed after `after`, nothing happened after it. A full page covers up
        // to its last rev (what came between and was changed again is in a later page); a
        // page with room to spare, up to the room's seq as the page was read.
        let through = match messages.last() {
            None => after,
            Some(last) if messages.len() as i64 >= limit => last.rev,
            Some(last) => room_seq(rows.first())
                .map_err(|e| self.failed(e))?
                .max(last.rev),
        };
        Ok(Page { messages, through })
    }

    /// Message `message_id` if `user_id` is in its room: `None` for no such message and for
    /// one in a room the user is not in alike (one query either way, so neither the answer
    /// nor its time tells them apart).
    pub async fn message_for_member(
        &self,
        message_id: &str,
        user_id: &str,
    ) -> StoreResult<Option<StoredMessage>> {
        let row = sqlx::query(&format!(
            "{SELECT_MESSAGES} JOIN memberships mb ON mb.room_id = m.room_id AND mb.user_id = $2 \
             WHERE m.id = $1"
        ))
        .bind(message_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        row.as_ref()
            .map(message_from_row)
            .transpose()
            .map_err(|e| self.failed(e))
    }

    /// Whether message `message_id` was deleted (or is not there).
    pub async fn is_deleted(&self, message_id: &str) -> StoreResult<bool> {
        let row: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT deleted_at FROM messages WHERE id = $1")
                .bind(message_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.failed(e))?;
        Ok(row.is_none_or(|(deleted_at,)| deleted_at.is_some()))
    }

    /// The members of `room_id` whose names have these keys (see `name_key`): the people a
    /// message mentions. At most `MAX_MENTIONED` keys are asked for, one query.
    pub async fn members_named(&self, room_id: &str, keys: &[String]) -> StoreResult<Vec<User>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &keys[..keys.len().min(MAX_MENTIONED)];
        let placeholders: Vec<String> = (2..keys.len() + 2).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT u.id, u.username FROM users u \
             JOIN memberships mb ON mb.user_id = u.id AND mb.room_id = $1 \
             WHERE u.name_key IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_as::<_, (String, String)>(&sql).bind(room_id);
        for key in keys {
            query = query.bind(key);
        }
        let found = query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        // In the order the message names them.
        let mut people: Vec<User> = found
            .into_iter()
            .map(|(id, username)| User { id, username })
            .collect();
        people.sort_by_key(|u| keys.iter().position(|k| *k == name_key(&u.username)));
        Ok(people)
    }

    /// Edits or deletes `author`'s message in `room_id`, giving the change the room's next
    /// seq (the message's new rev), and returns the message as it now is; `None` when there
    /// is no such message of theirs, or it was deleted.
    pub async fn change_message(
        &self,
        room_id: &str,
        message_id: &str,
        author_id: &str,
        change: Change<'_>,
    ) -> StoreResult<Option<StoredMessage>> {
        let mut tx = self.pool.begin().await.map_err(|e| self.failed(e))?;
        let Some(rev) = self
            .next_rev(&mut tx, room_id, message_id, Some(author_id))
            .await?
        else {
            return Ok(None);
        };
        let now = super::now_ms();
        let update = match change {
            Change::Edit(body) => {
                sqlx::query("UPDATE messages SET body = $1, edited_at = $2, rev = $3 WHERE id = $4")
                    .bind(body)
            }
            // The text is erased, not hidden: nothing of it stays to be read or searched.
            Change::Delete => sqlx::query(
                "UPDATE messages SET body = $1, reactions = NULL, mentions = NULL, deleted_at = $2, \
                 rev = $3 WHERE id = $4",
            )
            .bind(""),
        };
        update
            .bind(now)
            .bind(rev)
            .bind(message_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.failed(e))?;
        if change == Change::Delete {
            // Its reactions go with its text, and it no longer counts as mentioning anyone.
            sqlx::query("DELETE FROM reactions WHERE message_id = $1")
                .bind(message_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.failed(e))?;
            sqlx::query(
                "DELETE FROM mentions WHERE room_id = $1 \
                 AND seq = (SELECT seq FROM messages WHERE id = $2)",
            )
            .bind(room_id)
            .bind(message_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.failed(e))?;
        }
        Ok(Some(self.commit_reading(tx, message_id).await?))
    }

    /// Takes the room's next seq for a change to `message_id` (in the room, not deleted,
    /// and `author_id`'s when given): the change's rev. `None` when there is no such
    /// message. The bump comes first in the transaction: it makes it a writer at once (on
    /// SQLite a read first would have to become one, which fails at once when another
    /// writes), and holds the room's row so its changes take seqs one at a time.
    pub(super) async fn next_rev(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        room_id: &str,
        message_id: &str,
        author_id: Option<&str>,
    ) -> StoreResult<Option<i64>> {
        let bumped: Option<(i64,)> = sqlx::query_as(
            "UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 AND EXISTS \
             (SELECT 1 FROM messages WHERE id = $2 AND room_id = $1 \
              AND author_id = COALESCE($3, author_id) AND deleted_at IS NULL) \
             RETURNING last_seq",
        )
        .bind(room_id)
        .bind(message_id)
        .bind(author_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(bumped.map(|(rev,)| rev))
    }

    /// Commits a change to message `message_id`, and returns the message as it left it.
    pub(super) async fn commit_reading(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Any>,
        message_id: &str,
    ) -> StoreResult<StoredMessage> {
        let row = sqlx::query(&format!("{SELECT_MESSAGES} WHERE m.id = $1"))
            .bind(message_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.failed(e))?;
        let message = message_from_row(&row).map_err(|e| self.failed(e))?;
        tx.commit().await.map_err(|e| self.failed(e))?;
        Ok(message)
    }

    /// One keyset page of a room's messages: `order` bounds and orders by seq against `$2`.
    async fn messages_where(
        &self,
        room_id: &str,
        order: &str,
        seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredMessage>> {
        let rows = self
            .rows_where(SELECT_MESSAGES, room_id, order, seq, limit)
            .await?;
        self.messages_of(&rows)
    }

    /// The rows of one keyset page of a room's messages, read with `select`: `order`
    /// bounds and orders them against `bound` (`$2`).
    async fn rows_where(
        &self,
        select: &str,
        room_id: &str,
        order: &str,
        bound: i64,
        limit: i64,
    ) -> StoreResult<Vec<AnyRow>> {
        sqlx::query(&format!(
            "{select} WHERE m.room_id = $1 AND {order} LIMIT $3"
        ))
        .bind(room_id)
        .bind(bound)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))
    }

    fn messages_of(&self, rows: &[AnyRow]) -> StoreResult<Vec<StoredMessage>> {
        rows.iter()
            .map(message_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.failed(e))
    }
}
