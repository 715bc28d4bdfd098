//! Rooms (public groups and direct conversations) and who belongs to them.

use std::sync::atomic::Ordering;

use sqlx::Row;

use super::columns::Columns;
use super::{Store, StoreError, StoreResult, now_ms};
use crate::model::{GroupListing, Room, RoomKind, RoomSummary, User};

/// Who a session belongs to, and the rooms of their sidebar.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user: User,
    /// The user's memberships, as `Store::rooms_of` orders them.
    pub rooms: Vec<RoomSummary>,
    /// The groups among them, by name.
    pub groups: Vec<Room>,
}

fn room_from_row<R: Columns>(row: &R) -> Result<Room, R::Error> {
    let kind = row.text("kind")?;
    Ok(Room {
        id: row.text("id")?,
        kind: if kind == "direct" {
            RoomKind::Direct
        } else {
            RoomKind::Group
        },
        name: row.maybe_text("name")?,
    })
}

/// The key that makes a direct conversation unique per pair, whoever starts it.
fn pair_key(a: &str, b: &str) -> String {
    if a <= b {
        format!("{a}:{b}")
    } else {
        format!("{b}:{a}")
    }
}

/// The user's memberships (the user's id is the macro's argument, an SQL expression): each
/// room, its unread count and, for a conversation, the partner. The partner is looked up
/// per direct room, one index probe each. A join on
/// memberships instead had the planner walk every member of each group the user is in (then
/// filter them out), so a connect cost O(people in the user's groups).
///
/// A macro, not a `const`, so that `concat!` builds each query that uses it at compile time
/// rather than `format!` on every connect.
macro_rules! memberships_sql {
    ($user_id:literal) => {
        concat!(
            "SELECT r.id, r.kind, r.name, r.posted - m.read_posted AS unread, \
        (SELECT COUNT(*) FROM mentions mn WHERE mn.user_id = m.user_id AND mn.room_id = r.id \
         AND mn.seq > m.last_read_seq) AS mentioned, \
        CASE WHEN r.kind = 'direct' THEN \
            (SELECT pm.user_id FROM memberships pm \
             WHERE pm.room_id = r.id AND pm.user_id <> m.user_id LIMIT 1) \
        END AS peer_id, \
        CASE WHEN r.kind = 'direct' THEN \
            (SELECT u.username FROM memberships pm JOIN users u ON u.id = pm.user_id \
             WHERE pm.room_id = r.id AND pm.user_id <> m.user_id LIMIT 1) \
        END AS peer_name, \
        CAST(CASE WHEN m.hidden_through IS NOT NULL AND r.posted <= m.hidden_through \
            THEN 1 ELSE 0 END AS BIGINT) AS hidden, \
        CAST(CASE WHEN r.kind = 'direct' THEN \
            (SELECT COUNT(*) FROM memberships pm JOIN blocks b ON b.blocker_id = pm.user_id \
             WHERE pm.room_id = r.id AND pm.user_id <> m.user_id AND b.blocked_id = m.user_id) \
            ELSE 0 END AS BIGINT) AS blocked_by_peer, \
        CAST(CASE WHEN r.kind = 'direct' THEN \
            (SELECT COUNT(*) FROM memberships pm JOIN blocks b ON b.blocked_id = pm.user_id \
             WHERE pm.room_id = r.id AND pm.user_id <> m.user_id AND b.blocker_id = m.user_id) \
            ELSE 0 END AS BIGINT) AS blocking_peer \
    FROM memberships m JOIN rooms r ON r.id = m.room_id \
    WHERE m.user_id = ",
            $user_id
        )
    };
}

fn summary_from_row<R: Columns>(row: &R) -> Result<RoomSummary, R::Error> {
    let peer_id = row.maybe_text("peer_id")?;
    let peer_name = row.maybe_text("peer_name")?;
    Ok(RoomSummary {
        room: room_from_row(row)?,
        peer: peer_id
            .zip(peer_name)
            .map(|(id, username)| User { id, username }),
        unread: row.int("unread")?,
        mentioned: row.int("mentioned")?,
        hidden: row.int("hidden")? != 0,
        blocked_by_peer: row.int("blocked_by_peer")? != 0,
        blocking_peer: row.int("blocking_peer")? != 0,
    })
}

/// The session's user and their sidebar's rooms, the user first (`part` 'u', the name in
/// `name`); nothing when the session is unknown or expired. `$1`: the session, `$2`: now.
const SIGNED_IN_SQL: &str = concat!(
    "WITH me AS (SELECT u.id, u.username FROM sessions s JOIN users u ON u.id = s.user_id \
     WHERE s.id = $1 AND s.expires_at > $2) \
     SELECT 'u' AS part, id, 'user' AS kind, username AS name, 0 AS unread, \
     0 AS mentioned, NULL AS peer_id, NULL AS peer_name, 0 AS hidden, 0 AS blocked_by_peer, \
     0 AS blocking_peer FROM me \
     UNION ALL SELECT 'a', mine.* FROM (",
    memberships_sql!("(SELECT id FROM me)"),
    ") mine ORDER BY part DESC, kind, name, peer_name"
);

/// One row of `SIGNED_IN_SQL`.
enum Part {
    Me(User),
    Room(RoomSummary),
}

fn part_from_row<R: Columns>(row: &R) -> Result<Part, R::Error> {
    if row.text("part")? == "u" {
        Ok(Part::Me(User {
            id: row.text("id")?,
            username: row.text("name")?,
        }))
    } else {
        summary_from_row(row).map(Part::Room)
    }
}

/// `SIGNED_IN_SQL`'s rows, read on the calling thread.
fn signed_in_inline(
    conn: &rusqlite::Connection,
    session_id: &str,
    now: i64,
) -> rusqlite::Result<Vec<Part>> {
    let mut statement = conn.prepare_cached(SIGNED_IN_SQL)?;
    let parts = statement.query_map(
        rusqlite::named_params! { "$1": session_id, "$2": now },
        |row| part_from_row(row),
    )?;
    parts.collect()
}

/// Whether the user's membership of the room has anything unread. `$1`: the room, `$2`:
/// the user.
const UNREAD_SQL: &str = "SELECT EXISTS (SELECT 1 FROM memberships m JOIN rooms r \
     ON r.id = m.room_id WHERE r.id = $1 AND m.user_id = $2 AND m.last_read_seq < r.last_seq)";

/// `UNREAD_SQL`, read on the calling thread.
fn unread_inline(
    conn: &rusqlite::Connection,
    room_id: &str,
    user_id: &str,
) -> rusqlite::Result<bool> {
    conn.prepare_cached(UNREAD_SQL)?.query_row(
        rusqlite::named_params! { "$1": room_id, "$2": user_id },
        |row| row.get(0),
    )
}

/// `SIGNED_IN_SQL`'s rows as a `SignedIn`: none without the user's row first.
fn signed_in_from(parts: Vec<Part>) -> Option<SignedIn> {
    let mut parts = parts.into_iter();
    let Some(Part::Me(user)) = parts.next() else {
        return None;
    };
    let rooms: Vec<RoomSummary> = parts
        .filter_map(|part| match part {
            Part::Room(summary) => Some(summary),
            Part::Me(_) => None,
        })
        .collect();
    let groups = rooms
        .iter()
        .filter(|s| s.room.kind == RoomKind::Group)
        .map(|s| s.room.clone())
        .collect();
    Some(SignedIn {
        user,
        rooms,
        groups,
    })
}

impl Store {
    pub async fn group_by_name(&self, name: &str) -> StoreResult<Option<Room>> {
        let row =
            sqlx::query("SELECT id, kind, name FROM rooms WHERE kind = 'group' AND name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.failed(e))?;
        row.map(|r| room_from_row(&r))
            .transpose()
            .map_err(|e| self.failed(e))
    }

    /// Returns the group with this name, creating it first (as `creator`'s) if needed; the
    /// flag says whether this call created it. Two nodes racing to create the same name end
    /// with one row.
    pub async fn find_or_create_group(
        &self,
        name: &str,
        creator: &User,
    ) -> StoreResult<(Room, bool)> {
        if let Some(room) = self.group_by_name(name).await? {
            return Ok((room, false));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let created = sqlx::query(
            "INSERT INTO rooms (id, kind, name, created_by, created_at) \
             VALUES ($1, 'group', $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&id)
        .bind(name)
        .bind(&creator.id)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?
        .rows_affected()
            == 1;
        let room = self
            .group_by_name(name)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))?;
        Ok((room, created))
    }

    /// The one direct conversation between two users, created (with both memberships, and
    /// as started by `a`) on first use; the flag says whether this call created it.
    pub async fn find_or_create_direct(&self, a: &User, b: &User) -> StoreResult<(Room, bool)> {
        let key = pair_key(&a.id, &b.id);
        let mut tx = self.pool.begin().await.map_err(|e| self.failed(e))?;
        let created = sqlx::query(
            "INSERT INTO rooms (id, kind, pair_key, created_by, created_at) \
             VALUES ($1, 'direct', $2, $3, $4) ON CONFLICT (pair_key) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&key)
        .bind(&a.id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| self.failed(e))?
        .rows_affected()
            == 1;
        let row = sqlx::query("SELECT id, kind, name FROM rooms WHERE pair_key = $1")
            .bind(&key)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.failed(e))?;
        let room = room_from_row(&row).map_err(|e| self.failed(e))?;
        for user in [a, b] {
            sqlx::query(
                "INSERT INTO memberships (room_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(&room.id)
            .bind(&user.id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.failed(e))?;
        }
        tx.commit().await.map_err(|e| self.failed(e))?;
        Ok((room, created))
    }

    /// The direct conversation between two users, if they have one.
    pub async fn find_direct(&self, a: &User, b: &User) -> StoreResult<Option<Room>> {
        let row = sqlx::query("SELECT id, kind, name FROM rooms WHERE pair_key = $1")
            .bind(pair_key(&a.id, &b.id))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        row.map(|r| room_from_row(&r))
            .transpose()
            .map_err(|e| self.failed(e))
    }

    /// How many rooms the user chose to be in: the groups they belong to, and the
    /// conversations they started. A conversation someone else started costs them nothing.
    pub async fn chosen_room_count(&self, user_id: &str) -> StoreResult<i64> {
        let (count,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM memberships m JOIN rooms r ON r.id = m.room_id \
             WHERE m.user_id = $1 AND (r.kind = 'group' OR r.created_by = $1)",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(count)
    }

    /// How many rooms of `kind` the user created since `since_ms`.
    pub async fn rooms_created_since(
        &self,
        user_id: &str,
        kind: RoomKind,
        since_ms: i64,
    ) -> StoreResult<i64> {
        let (count,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM rooms WHERE created_by = $1 AND created_at > $2 AND kind = $3",
        )
        .bind(user_id)
        .bind(since_ms)
        .bind(kind.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(count)
    }

    /// Takes `user_id` out of a group; false when they were not in it (or it is not a group).
    pub async fn leave_group(&self, room_id: &str, user_id: &str) -> StoreResult<bool> {
        let left = sqlx::query(
            "DELETE FROM memberships WHERE room_id = $1 AND user_id = $2 AND EXISTS \
             (SELECT 1 FROM rooms WHERE id = $1 AND kind = 'group')",
        )
        .bind(room_id)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(left.rows_affected() > 0)
    }

    /// Hides a room from the user's sidebar until a message comes after the newest now.
    /// `hidden_through` is the room's count of messages posted then: an edit or a deletion
    /// (which takes a seq but posts nothing) does not bring the room back.
    pub async fn hide_room(&self, room_id: &str, user_id: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE memberships SET hidden_through = \
             (SELECT posted FROM rooms WHERE id = $1) WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Shows a hidden room in the user's sidebar again; true when it was hidden.
    pub async fn unhide_room(&self, room_id: &str, user_id: &str) -> StoreResult<bool> {
        let shown = sqlx::query(
            "UPDATE memberships SET hidden_through = NULL \
             WHERE room_id = $1 AND user_id = $2 AND hidden_through IS NOT NULL",
        )
        .bind(room_id)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(shown.rows_affected() > 0)
    }

    /// `blocker` blocks `blocked` (idempotent).
    pub async fn block(&self, blocker: &str, blocked: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO blocks (blocker_id, blocked_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(blocker)
        .bind(blocked)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Lifts `blocker`'s block on `blocked`; false when there was none.
    pub async fn unblock(&self, blocker: &str, blocked: &str) -> StoreResult<bool> {
        let lifted = sqlx::query("DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2")
            .bind(blocker)
            .bind(blocked)
            .execute(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(lifted.rows_affected() > 0)
    }

    /// Whether `user_id` hid the room, with nothing new in it since.
    pub async fn hidden_for(&self, room_id: &str, user_id: &str) -> StoreResult<bool> {
        let (hidden,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM memberships m JOIN rooms r ON r.id = m.room_id \
             WHERE m.room_id = $1 AND m.user_id = $2 AND m.hidden_through IS NOT NULL \
             AND r.posted <= m.hidden_through",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(hidden > 0)
    }

    /// The people `blocker` blocked, most recent first, at most `limit`.
    pub async fn blocked_by(&self, blocker: &str, limit: i64) -> StoreResult<Vec<User>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT u.id, u.username FROM blocks b JOIN users u ON u.id = b.blocked_id \
             WHERE b.blocker_id = $1 ORDER BY b.created_at DESC LIMIT $2",
        )
        .bind(blocker)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(rows
            .into_iter()
            .map(|(id, username)| User { id, username })
            .collect())
    }

    /// Whether `a` blocked `b`, and whether `b` blocked `a`.
    pub async fn blocks_between(&self, a: &str, b: &str) -> StoreResult<(bool, bool)> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT blocker_id FROM blocks WHERE (blocker_id = $1 AND blocked_id = $2) \
             OR (blocker_id = $2 AND blocked_id = $1)",
        )
        .bind(a)
        .bind(b)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok((
            rows.iter().any(|(blocker,)| blocker == a),
            rows.iter().any(|(blocker,)| blocker == b),
        ))
    }

    /// One page of public groups by name, after `after`, whose names start with `prefix`,
    /// with their member counts and whether `user_id` is in each.
    pub async fn browse_groups(
        &self,
        user_id: &str,
        prefix: &str,
        after: &str,
        limit: i64,
    ) -> StoreResult<Vec<GroupListing>> {
        // Group names are `a-z 0-9 - _`, all below `~`: names with the prefix sort between
        // it and it followed by `~`.
        let rows = sqlx::query(
            "SELECT r.id, r.kind, r.name, \
             (SELECT COUNT(*) FROM (SELECT 1 FROM memberships mm WHERE mm.room_id = r.id \
              LIMIT $5) counted) AS members, \
             (SELECT COUNT(*) FROM memberships me WHERE me.room_id = r.id AND me.user_id = $1) \
              AS joined \
             FROM rooms r WHERE r.kind = 'group' AND r.name > $2 AND r.name >= $3 \
             AND r.name < $4 ORDER BY r.name LIMIT $6",
        )
        .bind(user_id)
        .bind(after)
        .bind(prefix)
        .bind(format!("{prefix}~"))
        .bind(GroupListing::COUNTED)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        rows.iter()
            .map(|row| {
                Ok(GroupListing {
                    room: room_from_row(row)?,
                    members: row.try_get("members")?,
                    joined: row.try_get::<i64, _>("joined")? > 0,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.failed(e))
    }

    /// Makes `user` a member of a group (idempotent), with what was said before counted as
    /// read: a newcomer sees the history, not a badge for all of it.
    pub async fn join_group(&self, room_id: &str, user_id: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO memberships (room_id, user_id, last_read_seq, read_posted) \
             SELECT id, $2, last_seq, posted FROM rooms WHERE id = $1 AND kind = 'group' \
             ON CONFLICT DO NOTHING",
        )
        .bind(room_id)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.conflict_or(e))?;
        Ok(())
    }

    /// The room, if `user_id` belongs to it. This is the one gate in front of history,
    /// posting and presence for a room id.
    pub async fn room_for_member(&self, room_id: &str, user_id: &str) -> StoreResult<Option<Room>> {
        let row = sqlx::query(
            "SELECT r.id, r.kind, r.name FROM rooms r JOIN memberships m ON m.room_id = r.id \
             WHERE r.id = $1 AND m.user_id = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        row.map(|r| room_from_row(&r))
            .transpose()
            .map_err(|e| self.failed(e))
    }

    /// Every room the user belongs to, with the unread count and, for direct rooms, the peer.
    pub async fn rooms_of(&self, user_id: &str) -> StoreResult<Vec<RoomSummary>> {
        let sql = concat!(
            memberships_sql!("$1"),
            " ORDER BY r.kind, r.name, peer_name"
        );
        let rows = sqlx::query(sql)
            .bind(user_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        rows.iter()
            .map(summary_from_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.failed(e))
    }

    /// The signed-in user behind a session (`None` when it is unknown or expired), with
    /// `rooms_of` and `groups`: everything a page or a connecting socket needs for its
    /// sidebar, in one trip to the database instead of two. On SQLite it is read on the
    /// calling thread when it can be (`inline`), as every connect reads it.
    pub async fn signed_in(&self, session_id: &str) -> StoreResult<Option<SignedIn>> {
        let now = now_ms();
        if let Some(inline) = &self.inline
            && let Some(parts) = inline.read(|conn| signed_in_inline(conn, session_id, now))
        {
            self.session_reads.inline.fetch_add(1, Ordering::Relaxed);
            return Ok(signed_in_from(parts));
        }
        self.session_reads.pooled.fetch_add(1, Ordering::Relaxed);
        self.signed_in_through_pool(session_id, now).await
    }

    async fn signed_in_through_pool(
        &self,
        session_id: &str,
        now: i64,
    ) -> StoreResult<Option<SignedIn>> {
        let rows = sqlx::query(SIGNED_IN_SQL)
            .bind(session_id)
            .bind(now)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        let parts = rows
            .iter()
            .map(part_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.failed(e))?;
        Ok(signed_in_from(parts))
    }

    /// `mark_read` for a room being left, where most often nothing new came meanwhile. On
    /// SQLite whether anything is unread is looked at first, on the calling thread: the
    /// update would be a write transaction on sqlx's thread, waiting its turn behind every
    /// other writer, for no change; a storm of departures is one per socket. Entering a
    /// room knows its unread count and calls `mark_read` only when there is something.
    pub async fn mark_left_read(&self, room_id: &str, user_id: &str) -> StoreResult<()> {
        if let Some(inline) = &self.inline
            && inline.read(|conn| unread_inline(conn, room_id, user_id)) == Some(false)
        {
            return Ok(());
        }
        self.mark_read(room_id, user_id).await
    }

    /// Marks everything in the room as read by the user, up to the newest message now.
    pub async fn mark_read(&self, room_id: &str, user_id: &str) -> StoreResult<()> {
        // A row rewritten with its own value is still a row version and WAL on PostgreSQL.
        sqlx::query(
            "UPDATE memberships SET last_read_seq = r.last_seq, read_posted = r.posted \
             FROM rooms r \
             WHERE r.id = $1 AND memberships.room_id = r.id AND memberships.user_id = $2 \
             AND memberships.last_read_seq < r.last_seq",
        )
        .bind(room_id)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::inline::InlineReads;
    use super::super::test_db::TempDb;
    use super::super::{Draft, Store, now_ms, sqlite_file};
    use crate::chat::names::Username;
    use crate::model::User;

    #[test]
    fn pair_key_ignores_who_starts() {
        assert_eq!(super::pair_key("a", "b"), super::pair_key("b", "a"));
    }

    async fn user(store: &Store, name: &str) -> User {
        let name = Username::parse(name).expect("a valid name");
        store
            .create_user(&name, None, None)
            .await
            .expect("a new user")
    }

    async fn post(store: &Store, room_id: &str, author: &User, mentions: &[User]) {
        let draft = Draft {
            room_id,
            author,
            body: "hello",
            client_id: None,
            replying_to: None,
            mentions,
        };
        let queued = store.batcher.queue(draft, None).await.expect("queued");
        queued.await.expect("stored");
    }

    /// Ann, in a group and two direct conversations, with something in every column her
    /// sidebar shows: unread messages, a mention, a peer, a hidden room, a block each way.
    async fn ann_with_a_full_sidebar(store: &Store) -> String {
        let ann = user(store, "ann").await;
        let bob = user(store, "bob").await;
        let cy = user(store, "cyd").await;
        let (group, _) = store
            .find_or_create_group("busy", &bob)
            .await
            .expect("a group");
        store.join_group(&group.id, &ann.id).await.expect("joined");
        post(store, &group.id, &bob, std::slice::from_ref(&ann)).await;
        let (with_bob, _) = store
            .find_or_create_direct(&ann, &bob)
            .await
            .expect("a pair");
        post(store, &with_bob.id, &bob, &[]).await;
        let (with_cy, _) = store
            .find_or_create_direct(&ann, &cy)
            .await
            .expect("a pair");
        post(store, &with_cy.id, &cy, &[]).await;
        store.hide_room(&with_cy.id, &ann.id).await.expect("hidden");
        store.block(&bob.id, &ann.id).await.expect("blocked");
        store.block(&ann.id, &cy.id).await.expect("blocked");
        store
            .create_session(&ann.id, 60_000)
            .await
            .expect("a session")
    }

    /// Ann's sidebar read on the calling thread, as `signed_in` returns it.
    fn read_inline(
        inline: &InlineReads,
        session: &str,
    ) -> rusqlite::Result<Option<super::SignedIn>> {
        inline
            .try_read(|conn| super::signed_in_inline(conn, session, now_ms()))
            .map(super::signed_in_from)
    }

    /// A store on `db` with Ann's full sidebar: her session, and what `signed_in` reads.
    async fn ann_signed_in(db: &TempDb) -> (Store, String, Option<super::SignedIn>) {
        let store = Store::connect(db.url()).await.expect("a fresh store");
        let session = ann_with_a_full_sidebar(&store).await;
        let read = store.signed_in(&session).await.expect("read");
        (store, session, read)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_read_on_the_calling_thread_is_what_the_pool_reads() {
        let db = TempDb::new();
        let store = Store::connect(db.url()).await.expect("a fresh store");
        let inline = store.inline.clone().expect("a SQLite file is read inline");
        let session = ann_with_a_full_sidebar(&store).await;

        let read = read_inline(&inline, &session).expect("read on the calling thread");
        let pooled = store
            .signed_in_through_pool(&session, now_ms())
            .await
            .expect("read");
        assert_eq!(format!("{read:?}"), format!("{pooled:?}"));
        let signed_in = read.expect("a live session");
        assert_eq!(signed_in.user.username, "ann");
        let rooms = &signed_in.rooms;
        assert_eq!(rooms.len(), signed_in.groups.len() + 2, "{rooms:?}");
        assert!(rooms.iter().any(|r| r.mentioned == 1 && r.unread == 1));
        assert!(rooms.iter().any(|r| r.blocked_by_peer && r.peer.is_some()));
        assert!(rooms.iter().any(|r| r.blocking_peer && r.hidden));

        let unknown = read_inline(&inline, "unknown").expect("read on the calling thread");
        assert!(unknown.is_none());
        store.close().await;
    }

    /// A read that runs too long on the calling thread stops, and the pool reads instead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_read_too_long_for_the_calling_thread_is_read_through_the_pool() {
        let db = TempDb::new();
        let (mut store, session, expected) = ann_signed_in(&db).await;
        // No step at all, looked at after every one.
        let hasty = InlineReads::new(sqlite_file(db.url()).expect("a file")).bounded(0, 1);
        match read_inline(&hasty, &session) {
            Err(rusqlite::Error::SqliteFailure(e, _)) => {
                assert_eq!(e.code, rusqlite::ErrorCode::OperationInterrupted)
            }
            other => panic!("the read should stop at its first step: {other:?}"),
        }
        store.inline = Some(Arc::new(hasty));

        let read = store
            .signed_in(&session)
            .await
            .expect("read through the pool");
        assert_eq!(format!("{read:?}"), format!("{expected:?}"));
        assert!(read.is_some());
        assert!(
            store.inline.as_ref().is_some_and(|i| i.is_on()),
            "stopping is no failure"
        );
        store.close().await;
    }

    /// Reads on the calling thread that keep failing (here: the file is no database) fall
    /// back to the pool each time, and after a few are given up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_the_calling_thread_cannot_read_is_read_through_the_pool() {
        let db = TempDb::new();
        let (mut store, session, expected) = ann_signed_in(&db).await;
        let other = TempDb::new();
        std::fs::write(&other.0, vec![b'x'; 4096]).expect("a file that is no database");
        store.inline = sqlite_file(other.url()).map(|f| Arc::new(InlineReads::new(f)));
        assert!(store.inline.as_ref().is_some_and(|i| i.is_on()));

        for _ in 0..super::super::inline::GIVE_UP_AFTER {
            let read = store
                .signed_in(&session)
                .await
                .expect("read through the pool");
            assert_eq!(format!("{read:?}"), format!("{expected:?}"));
        }
        assert!(
            store.inline.as_ref().is_some_and(|i| !i.is_on()),
            "given up"
        );
        store.close().await;
    }

    /// A socket leaving a room with nothing new in it writes nothing: it does not wait for
    /// the database's write lock, held here by another connection; one leaving with
    /// something unread still marks it read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leaving_a_room_with_nothing_new_writes_nothing() {
        let db = TempDb::new();
        let store = Store::connect(db.url()).await.expect("a fresh store");
        let ann = user(&store, "ann").await;
        let bob = user(&store, "bob").await;
        let (group, _) = store
            .find_or_create_group("busy", &bob)
            .await
            .expect("a group");
        store.join_group(&group.id, &ann.id).await.expect("joined");
        post(&store, &group.id, &bob, &[]).await;
        let inline = store.inline.clone().expect("a SQLite file is read inline");
        let unread = || {
            inline
                .try_read(|conn| super::unread_inline(conn, &group.id, &ann.id))
                .expect("read on the calling thread")
        };
        // Leaving with something unread marks it read.
        let leave_unread = || async {
            assert!(unread());
            store
                .mark_left_read(&group.id, &ann.id)
                .await
                .expect("marked");
            assert!(!unread());
        };
        leave_unread().await;

        let writer = rusqlite::Connection::open(&db.0).expect("another connection");
        writer
            .execute_batch("BEGIN IMMEDIATE")
            .expect("the write lock");
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            store.mark_left_read(&group.id, &ann.id),
        )
        .await
        .expect("left without waiting for the write lock")
        .expect("nothing to mark");
        writer.execute_batch("ROLLBACK").expect("the lock let go");
        drop(writer);

        post(&store, &group.id, &bob, &[]).await;
        leave_unread().await;
        store.close().await;
    }

    /// Closing the store closes the connections that read on the calling thread first, so
    /// that the pool's last connection folds the write-ahead log into the file: a copy of
    /// the file alone, once the node has stopped, holds everything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_store_leaves_everything_in_the_database_file() {
        let db = TempDb::new();
        let store = Store::connect(db.url()).await.expect("a fresh store");
        let session = ann_with_a_full_sidebar(&store).await;
        let inline = store.inline.clone().expect("a SQLite file is read inline");
        read_inline(&inline, &session).expect("a connection kept");
        store.close().await;

        let wal = std::fs::metadata(format!("{}-wal", db.0.display()));
        assert!(
            wal.as_ref().map_or(true, |m| m.len() == 0),
            "the write-ahead log is left: {wal:?}"
        );
    }
}
