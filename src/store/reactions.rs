//! Reactions to messages. Toggling one is a change to the room's history: it takes the
//! room's next seq (the message's new rev), and the message keeps its reactions as shown
//! (`messages.reactions`), so history and catch-up read them with the message.

use serde::{Deserialize, Serialize};

use super::messages::{Person, from_json_column, to_json_column};
use super::{Store, StoreResult};
use crate::chat::reactions::{MAX_KINDS, NAMED};
use crate::model::{Reaction, StoredMessage, User};

/// What became of a toggled reaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reacted {
    /// Added or taken back: the message as it now is.
    Changed(Box<StoredMessage>),
    /// No such message in the room, or it was deleted.
    NoMessage,
    /// A new emoji, and the message already has `MAX_KINDS`.
    Full,
}

/// `messages.reactions`: `[{"e": emoji, "n": count, "who": [[user id, username], …]}]`.
#[derive(Serialize, Deserialize)]
struct Column {
    e: String,
    n: i64,
    who: Vec<Person>,
}

/// A message's reactions from its column.
pub(super) fn from_column(column: Option<String>) -> Vec<Reaction> {
    from_json_column::<Column>(column)
        .into_iter()
        .map(|c| Reaction {
            emoji: c.e,
            count: c.n,
            named: c.who.into_iter().map(Person::user).collect(),
        })
        .collect()
}

fn to_column(reactions: &[Reaction]) -> Option<String> {
    let columns: Vec<Column> = reactions
        .iter()
        .map(|r| Column {
            e: r.emoji.clone(),
            n: r.count,
            who: r.named.iter().map(Person::of).collect(),
        })
        .collect();
    to_json_column(&columns)
}

impl Store {
    /// Adds `user_id`'s `emoji` to message `message_id` in `room_id`, or takes it back if
    /// it is there. The caller has checked the user is in the room.
    pub async fn toggle_reaction(
        &self,
        room_id: &str,
        message_id: &str,
        user_id: &str,
        emoji: &str,
    ) -> StoreResult<Reacted> {
        let mut tx = self.pool.begin().await.map_err(|e| self.failed(e))?;
        let Some(rev) = self.next_rev(&mut tx, room_id, message_id, None).await? else {
            return Ok(Reacted::NoMessage);
        };
        let taken_back = sqlx::query(
            "DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND user_id = $3",
        )
        .bind(message_id)
        .bind(emoji)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.failed(e))?
        .rows_affected()
            > 0;
        if !taken_back {
            // A new emoji must find room among the message's kinds; one already there
            // always may.
            let (kinds, known, latest): (i64, i64, i64) = sqlx::query_as(
                "SELECT COUNT(DISTINCT emoji), \
                 COALESCE(SUM(CASE WHEN emoji = $2 THEN 1 ELSE 0 END), 0), \
                 COALESCE(MAX(created_at), 0) \
                 FROM reactions WHERE message_id = $1",
            )
            .bind(message_id)
            .bind(emoji)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.failed(e))?;
            if known == 0 && kinds >= MAX_KINDS as i64 {
                return Ok(Reacted::Full);
            }
            sqlx::query(
                "INSERT INTO reactions (message_id, emoji, user_id, created_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(message_id)
            .bind(emoji)
            .bind(user_id)
            // The people are named in the order they reacted, by this time: two reactions
            // in one millisecond are still one after the other (the room's next seq above
            // lets one toggle at a time through).
            .bind(super::now_ms().max(latest.saturating_add(1)))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.failed(e))?;
        }
        let reactions = self.reactions_of(&mut tx, message_id).await?;
        sqlx::query("UPDATE messages SET reactions = $1, rev = $2 WHERE id = $3")
            .bind(to_column(&reactions))
            .bind(rev)
            .bind(message_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.failed(e))?;
        let message = self.commit_reading(tx, message_id).await?;
        Ok(Reacted::Changed(Box::new(message)))
    }

    /// A message's reactions as the transaction sees them: each emoji in the order it was
    /// first used, its count, and its first `NAMED` people. One statement, whose work is
    /// bounded by the message's reactions (at most `MAX_KINDS` per member).
    async fn reactions_of(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        message_id: &str,
    ) -> StoreResult<Vec<Reaction>> {
        let rows: Vec<(String, i64, String, String)> = sqlx::query_as(
            "SELECT r.emoji, r.n, u.id, u.username FROM ( \
                SELECT emoji, user_id, \
                       COUNT(*) OVER (PARTITION BY emoji) AS n, \
                       MIN(created_at) OVER (PARTITION BY emoji) AS first, \
                       ROW_NUMBER() OVER (PARTITION BY emoji ORDER BY created_at, user_id) AS k \
                FROM reactions WHERE message_id = $1) r \
             JOIN users u ON u.id = r.user_id \
             WHERE r.k <= $2 ORDER BY r.first, r.emoji, r.k",
        )
        .bind(message_id)
        .bind(NAMED as i64)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| self.failed(e))?;
        let mut reactions: Vec<Reaction> = Vec::new();
        for (emoji, count, id, username) in rows {
            let user = User { id, username };
            match reactions.last_mut() {
                Some(last) if last.emoji == emoji => last.named.push(user),
                _ => reactions.push(Reaction {
                    emoji,
                    count,
                    named: vec![user],
                }),
            }
        }
        Ok(reactions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::names::Username;
    use crate::store::test_db::TempDb;

    /// People are named in the order they reacted: after a reaction stamped ahead of this
    /// node's clock (another node's clock runs fast), and within one millisecond.
    #[tokio::test]
    async fn people_are_named_in_the_order_they_reacted() {
        let db = TempDb::new();
        let store = Store::connect(db.url()).await.expect("a fresh store");
        let mut people = Vec::new();
        for name in ["ann", "bob", "cyd"] {
            let name = Username::parse(name).unwrap();
            people.push(store.create_user(&name, None, None).await.expect("a user"));
        }
        let (room, _) = store
            .find_or_create_group("lunch", &people[0])
            .await
            .expect("a room");
        let message = store
            .post_message(&room.id, &people[0], "noon?")
            .await
            .expect("posted");
        sqlx::query(
            "INSERT INTO reactions (message_id, emoji, user_id, created_at) \
             VALUES ($1, '👍', $2, $3)",
        )
        .bind(&message.id)
        .bind(&people[2].id)
        .bind(super::super::now_ms() + 60_000)
        .execute(&store.pool)
        .await
        .expect("cyd reacted, a minute ahead");
        // Later accounts have larger ids: reacting in the opposite order shows the order.
        for person in [&people[1], &people[0]] {
            let reacted = store
                .toggle_reaction(&room.id, &message.id, &person.id, "👍")
                .await
                .expect("reacted");
            assert!(matches!(reacted, Reacted::Changed(_)), "{reacted:?}");
        }
        let page = store.latest_page(&room.id, 1).await.expect("a page");
        let named: Vec<&str> = page.messages[0].reactions[0]
            .named
            .iter()
            .map(|u| u.username.as_str())
            .collect();
        assert_eq!(named, ["cyd", "bob", "ann"]);
        store.close().await;
    }
}
