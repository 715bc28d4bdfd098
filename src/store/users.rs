//! Accounts, server-side sessions, and failed log-ins.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, StoreResult, now_ms};
use crate::chat::names::{Username, name_key};
use crate::model::User;

/// The fixed ids of the groups every new account joins (see migration 0002).
const DEFAULT_GROUP_IDS: [&str; 4] = [
    "00000000-0000-7000-8000-000000000001",
    "00000000-0000-7000-8000-000000000002",
    "00000000-0000-7000-8000-000000000003",
    "00000000-0000-7000-8000-000000000004",
];

fn user_from_row(row: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
    })
}

/// Failed log-ins into one account (see `Store::login_failures`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoginFailures {
    /// From any address, in the windows that started in the last hour.
    pub recent: i64,
    /// From the address asking, since its last success.
    pub here: i64,
    /// When the last of those was.
    pub last_here_ms: Option<i64>,
}

/// Finding an account by name: its exact spelling first, then its key.
const BY_NAME_SELECT: &str = "SELECT id, username";
const BY_NAME_WHERE: &str =
    "FROM users WHERE username = $1 OR name_key = $2 ORDER BY username = $1 DESC LIMIT 1";

impl Store {
    /// Creates an account and makes it a member of the default groups. A taken username (or
    /// one with the same key: see `Username::key`) is `StoreError::Conflict`.
    pub async fn create_user(
        &self,
        username: &Username,
        email: Option<&str>,
        password_hash: Option<&str>,
    ) -> StoreResult<User> {
        let user = User {
            id: uuid::Uuid::now_v7().to_string(),
            username: username.as_str().to_owned(),
        };
        let mut tx = self.pool.begin().await.map_err(|e| self.failed(e))?;
        sqlx::query(
            "INSERT INTO users (id, username, name_key, email, password_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&user.id)
        .bind(&user.username)
        .bind(username.key())
        .bind(email)
        .bind(password_hash)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| self.conflict_or(e))?;
        for room in DEFAULT_GROUP_IDS {
            // What was said before counts as read (see `Store::join_group`).
            sqlx::query(
                "INSERT INTO memberships (room_id, user_id, last_read_seq, read_posted) \
                 SELECT id, $2, last_seq, posted FROM rooms WHERE id = $1",
            )
            .bind(room)
            .bind(&user.id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.failed(e))?;
        }
        tx.commit().await.map_err(|e| self.failed(e))?;
        Ok(user)
    }

    /// Inserts many accounts sharing one password hash, skipping names already taken.
    /// Returns how many were created.
    pub async fn create_users_bulk(
        &self,
        users: &[(Username, String)],
        password_hash: &str,
    ) -> StoreResult<u64> {
        let mut created = 0;
        for (username, email) in users {
            match self
                .create_user(username, Some(email), Some(password_hash))
                .await
            {
                Ok(_) => created += 1,
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(created)
    }

    /// The account and its password hash (None for guests), for logging in.
    pub async fn user_credentials(
        &self,
        username: &Username,
    ) -> StoreResult<Option<(User, Option<String>)>> {
        let row = sqlx::query(&format!("{BY_NAME_SELECT}, password_hash {BY_NAME_WHERE}"))
            .bind(username.as_str())
            .bind(username.key())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        row.map(|row| Ok((user_from_row(&row)?, row.try_get("password_hash")?)))
            .transpose()
            .map_err(|e| self.failed(e))
    }

    /// The account a name means: the one of that name, else the one whose name is the
    /// same under `Username::key` (`Alice` finds `alice`).
    pub async fn user_by_name(&self, username: &Username) -> StoreResult<Option<User>> {
        let row = sqlx::query(&format!("{BY_NAME_SELECT} {BY_NAME_WHERE}"))
            .bind(username.as_str())
            .bind(username.key())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        row.map(|r| user_from_row(&r))
            .transpose()
            .map_err(|e| self.failed(e))
    }

    /// Gives the accounts made before names had keys theirs, a batch at a time. A key that
    /// an earlier name already holds is left unset: that account keeps its name, found by
    /// its exact spelling.
    pub async fn backfill_name_keys(&self) -> StoreResult<u64> {
        let mut done = 0;
        let mut after = String::new();
        loop {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT id, username FROM users WHERE name_key IS NULL AND id > $1 \
                 ORDER BY id LIMIT 500",
            )
            .bind(&after)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
            let Some((last, _)) = rows.last() else {
                return Ok(done);
            };
            after = last.clone();
            for (id, username) in rows {
                let keyed = sqlx::query("UPDATE users SET name_key = $1 WHERE id = $2")
                    .bind(name_key(&username))
                    .bind(&id)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| self.conflict_or(e));
                match keyed {
                    Ok(_) => done += 1,
                    Err(StoreError::Conflict) => {
                        tracing::warn!(username, "a name that looks like an older one keeps no key")
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Failed log-ins into `user_id`: from `address`, and from anywhere in windows that
    /// started after `since_ms`.
    pub async fn login_failures(
        &self,
        user_id: &str,
        address: &str,
        since_ms: i64,
    ) -> StoreResult<LoginFailures> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN window_started_at > $3 THEN window_failures \
             ELSE 0 END), 0) AS BIGINT) AS recent, MAX(CASE WHEN address = $2 THEN failures END) AS here, \
             MAX(CASE WHEN address = $2 THEN last_failure_at END) AS here_at \
             FROM login_failures WHERE user_id = $1",
        )
        .bind(user_id)
        .bind(address)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await.map_err(|e| self.failed(e))?;
        let failures = || {
            Ok(LoginFailures {
                recent: row.try_get("recent")?,
                here: row.try_get::<Option<i64>, _>("here")?.unwrap_or(0),
                last_here_ms: row.try_get("here_at")?,
            })
        };
        failures().map_err(|e| self.failed(e))
    }

    /// Counts a failed log-in from `address`: one more since its last success, and one
    /// more in its current window (a new window once the last is `window_ms` old).
    pub async fn record_login_failure(
        &self,
        user_id: &str,
        address: &str,
        window_ms: i64,
    ) -> StoreResult<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO login_failures (user_id, address, failures, last_failure_at, \
             window_failures, window_started_at) VALUES ($1, $2, 1, $3, 1, $3) \
             ON CONFLICT (user_id, address) DO UPDATE SET \
             failures = login_failures.failures + 1, last_failure_at = $3, \
             window_failures = CASE WHEN login_failures.window_started_at > $4 \
                 THEN login_failures.window_failures + 1 ELSE 1 END, \
             window_started_at = CASE WHEN login_failures.window_started_at > $4 \
                 THEN login_failures.window_started_at ELSE $3 END",
        )
        .bind(user_id)
        .bind(address)
        .bind(now)
        .bind(now - window_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// A successful log-in from `address` forgets the failures from there.
    pub async fn clear_login_failures(&self, user_id: &str, address: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM login_failures WHERE user_id = $1 AND address = $2")
            .bind(user_id)
            .bind(address)
            .execute(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    pub async fn create_session(&self, user_id: &str, ttl_ms: i64) -> StoreResult<String> {
        let id = hex::encode(rand::random::<[u8; 32]>());
        sqlx::query("INSERT INTO sessions (id, user_id, expires_at) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(user_id)
            .bind(now_ms() + ttl_ms)
            .execute(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(id)
    }

    /// The user behind a live session; expired sessions are treated as absent.
    pub async fn session_user(&self, session_id: &str) -> StoreResult<Option<User>> {
        let row = sqlx::query(
            "SELECT u.id, u.username FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = $1 AND s.expires_at > $2",
        )
        .bind(session_id)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        row.map(|r| user_from_row(&r))
            .transpose()
            .map_err(|e| self.failed(e))
    }

    pub async fn delete_session(&self, session_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(session_id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }
}
