//! Rooms (public groups and direct conversations) and who belongs to them.

use sqlx::Row;
use sqlx::any::AnyRow;

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

fn room_from_row(row: &AnyRow) -> Result<Room, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    Ok(Room {
        id: row.try_get("id")?,
        kind: if kind == "direct" {
            RoomKind::Direct
        } else {
            RoomKind::Group
        },
        name: row.try_get("name")?,
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

fn summary_from_row(row: &AnyRow) -> Result<RoomSummary, sqlx::Error> {
    let peer_id: Option<String> = row.try_get("peer_id")?;
    let peer_name: Option<String> = row.try_get("peer_name")?;
    Ok(RoomSummary {
        room: room_from_row(row)?,
        peer: peer_id
            .zip(peer_name)
            .map(|(id, username)| User { id, username }),
        unread: row.try_get("unread")?,
        mentioned: row.try_get("mentioned")?,
        hidden: row.try_get::<i64, _>("hidden")? != 0,
        blocked_by_peer: row.try_get::<i64, _>("blocked_by_peer")? != 0,
        blocking_peer: row.try_get::<i64, _>("blocking_peer")? != 0,
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
    /// sidebar, in one trip to the database instead of two. The user comes back as a row
    /// of its own (`part` 'u', the name in `name`), ahead of the rooms.
    pub async fn signed_in(&self, session_id: &str) -> StoreResult<Option<SignedIn>> {
        let sql = concat!(
            "WITH me AS (SELECT u.id, u.username FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = $1 AND s.expires_at > $2) \
             SELECT 'u' AS part, id, 'user' AS kind, username AS name, 0 AS unread, \
             0 AS mentioned, NULL AS peer_id, NULL AS peer_name, 0 AS hidden, 0 AS blocked_by_peer, \
             0 AS blocking_peer FROM me \
             UNION ALL SELECT 'a', mine.* FROM (",
            memberships_sql!("(SELECT id FROM me)"),
            ") mine ORDER BY part DESC, kind, name, peer_name"
        );
        let rows = sqlx::query(sql)
            .bind(session_id)
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        let mut rows = rows.iter();
        let Some(me) = rows.next() else {
            return Ok(None);
        };
        let part: String = me.try_get("part").map_err(|e| self.failed(e))?;
        if part != "u" {
            return Ok(None);
        }
        let user = User {
            id: me.try_get("id").map_err(|e| self.failed(e))?,
            username: me.try_get("name").map_err(|e| self.failed(e))?,
        };
        let rooms = rows
            .map(summary_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.failed(e))?;
        let groups = rooms
            .iter()
            .filter(|s| s.room.kind == RoomKind::Group)
            .map(|s| s.room.clone())
            .collect();
        Ok(Some(SignedIn {
            user,
            rooms,
            groups,
        }))
    }

    /// Marks everything in the room as read by the user, up to the newest message now.
    pub async fn mark_read(&self, room_id: &str, user_id: &str) -> StoreResult<()> {
        // Every socket that leaves a room marks it read; most have nothing new, and a row
        // rewritten with its own value is still a row version and WAL on PostgreSQL.
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
    #[test]
    fn pair_key_ignores_who_starts() {
        assert_eq!(super::pair_key("a", "b"), super::pair_key("b", "a"));
    }
}
