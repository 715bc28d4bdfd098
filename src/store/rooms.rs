//! Rooms (public groups and direct conversations) and who belongs to them.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, StoreResult, User, conflict_or, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomKind {
    Group,
    Direct,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub id: String,
    pub kind: RoomKind,
    /// The group's name; None for a direct conversation.
    pub name: Option<String>,
}

/// A room as one user sees it in the sidebar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    pub room: Room,
    /// For a direct conversation, the other participant.
    pub peer: Option<User>,
    pub unread: i64,
}

/// Who a session belongs to, and the rooms of their sidebar.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user: User,
    /// The user's memberships, as `Store::rooms_of` orders them.
    pub rooms: Vec<RoomSummary>,
    /// Every public group, by name.
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
            "SELECT r.id, r.kind, r.name, r.last_seq - m.last_read_seq AS unread, \
        CASE WHEN r.kind = 'direct' THEN \
            (SELECT pm.user_id FROM memberships pm \
             WHERE pm.room_id = r.id AND pm.user_id <> m.user_id LIMIT 1) \
        END AS peer_id, \
        CASE WHEN r.kind = 'direct' THEN \
            (SELECT u.username FROM memberships pm JOIN users u ON u.id = pm.user_id \
             WHERE pm.room_id = r.id AND pm.user_id <> m.user_id LIMIT 1) \
        END AS peer_name \
    FROM memberships m JOIN rooms r ON r.id = m.room_id \
    WHERE m.user_id = ",
            $user_id
        )
    };
}

fn summary_from_row(row: &AnyRow) -> StoreResult<RoomSummary> {
    let peer_id: Option<String> = row.try_get("peer_id")?;
    let peer_name: Option<String> = row.try_get("peer_name")?;
    Ok(RoomSummary {
        room: room_from_row(row)?,
        peer: peer_id
            .zip(peer_name)
            .map(|(id, username)| User { id, username }),
        unread: row.try_get("unread")?,
    })
}

impl Store {
    pub async fn group_by_name(&self, name: &str) -> StoreResult<Option<Room>> {
        let row =
            sqlx::query("SELECT id, kind, name FROM rooms WHERE kind = 'group' AND name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| room_from_row(&r)).transpose()?)
    }

    /// Returns the group with this name, creating it first if needed; the flag says whether
    /// this call created it. Two nodes racing to create the same name end with one row.
    pub async fn find_or_create_group(&self, name: &str) -> StoreResult<(Room, bool)> {
        if let Some(room) = self.group_by_name(name).await? {
            return Ok((room, false));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let created = sqlx::query(
            "INSERT INTO rooms (id, kind, name, created_at) VALUES ($1, 'group', $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&id)
        .bind(name)
        .bind(now_ms())
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        let room = self
            .group_by_name(name)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))?;
        Ok((room, created))
    }

    /// The one direct conversation between two users, created (with both memberships) on
    /// first use; the flag says whether this call created it.
    pub async fn find_or_create_direct(&self, a: &User, b: &User) -> StoreResult<(Room, bool)> {
        let key = pair_key(&a.id, &b.id);
        let mut tx = self.pool.begin().await?;
        let created = sqlx::query(
            "INSERT INTO rooms (id, kind, pair_key, created_at) VALUES ($1, 'direct', $2, $3) \
             ON CONFLICT (pair_key) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&key)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let row = sqlx::query("SELECT id, kind, name FROM rooms WHERE pair_key = $1")
            .bind(&key)
            .fetch_one(&mut *tx)
            .await?;
        let room = room_from_row(&row)?;
        for user in [a, b] {
            sqlx::query(
                "INSERT INTO memberships (room_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(&room.id)
            .bind(&user.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((room, created))
    }

    /// The direct conversation between two users, if they have one.
    pub async fn find_direct(&self, a: &User, b: &User) -> StoreResult<Option<Room>> {
        let row = sqlx::query("SELECT id, kind, name FROM rooms WHERE pair_key = $1")
            .bind(pair_key(&a.id, &b.id))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| room_from_row(&r)).transpose()?)
    }

    /// How many rooms the user belongs to.
    pub async fn membership_count(&self, user_id: &str) -> StoreResult<i64> {
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM memberships WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(count)
    }

    /// Makes `user` a member of a group (idempotent).
    pub async fn join_group(&self, room_id: &str, user_id: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO memberships (room_id, user_id) SELECT $1, $2 WHERE EXISTS \
             (SELECT 1 FROM rooms WHERE id = $1 AND kind = 'group') ON CONFLICT DO NOTHING",
        )
        .bind(room_id)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
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
        .await?;
        Ok(row.map(|r| room_from_row(&r)).transpose()?)
    }

    /// Every room the user belongs to, with the unread count and, for direct rooms, the peer.
    pub async fn rooms_of(&self, user_id: &str) -> StoreResult<Vec<RoomSummary>> {
        let sql = concat!(
            memberships_sql!("$1"),
            " ORDER BY r.kind, r.name, peer_name"
        );
        let rows = sqlx::query(sql).bind(user_id).fetch_all(&self.pool).await?;
        rows.iter().map(summary_from_row).collect()
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
             NULL AS peer_id, NULL AS peer_name FROM me \
             UNION ALL SELECT 'a', mine.* FROM (",
            memberships_sql!("(SELECT id FROM me)"),
            ") mine UNION ALL SELECT 'b', id, kind, name, 0, NULL, NULL FROM rooms \
             WHERE kind = 'group' AND EXISTS (SELECT 1 FROM me) \
             ORDER BY part DESC, kind, name, peer_name"
        );
        let rows = sqlx::query(sql)
            .bind(session_id)
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await?;
        let mut rows = rows.iter();
        let Some(me) = rows.next() else {
            return Ok(None);
        };
        let part: String = me.try_get("part")?;
        if part != "u" {
            return Ok(None);
        }
        let user = User {
            id: me.try_get("id")?,
            username: me.try_get("name")?,
        };
        let (mut rooms, mut groups) = (Vec::new(), Vec::new());
        for row in rows {
            let part: String = row.try_get("part")?;
            if part == "a" {
                rooms.push(summary_from_row(row)?);
            } else {
                groups.push(room_from_row(row)?);
            }
        }
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
            "UPDATE memberships SET last_read_seq = r.last_seq FROM rooms r \
             WHERE r.id = $1 AND memberships.room_id = r.id AND memberships.user_id = $2 \
             AND memberships.last_read_seq < r.last_seq",
        )
        .bind(room_id)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
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
