//! Accounts and server-side sessions.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, StoreResult, conflict_or, now_ms};

/// The fixed ids of the groups every new account joins (see migration 0002).
const DEFAULT_GROUP_IDS: [&str; 4] = [
    "00000000-0000-7000-8000-000000000001",
    "00000000-0000-7000-8000-000000000002",
    "00000000-0000-7000-8000-000000000003",
    "00000000-0000-7000-8000-000000000004",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub username: String,
}

impl User {
    fn from_row(row: &AnyRow) -> Result<User, sqlx::Error> {
        Ok(User {
            id: row.try_get("id")?,
            username: row.try_get("username")?,
        })
    }
}

impl Store {
    /// Creates an account and makes it a member of the default groups. A taken username is
    /// `StoreError::Conflict`.
    pub async fn create_user(
        &self,
        username: &str,
        email: Option<&str>,
        password_hash: Option<&str>,
    ) -> StoreResult<User> {
        let user = User {
            id: uuid::Uuid::now_v7().to_string(),
            username: username.to_owned(),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO users (id, username, email, password_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&user.id)
        .bind(&user.username)
        .bind(email)
        .bind(password_hash)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(conflict_or)?;
        for room in DEFAULT_GROUP_IDS {
            sqlx::query("INSERT INTO memberships (room_id, user_id) VALUES ($1, $2)")
                .bind(room)
                .bind(&user.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(user)
    }

    /// Inserts many accounts sharing one password hash, skipping names already taken.
    /// Returns how many were created.
    pub async fn create_users_bulk(
        &self,
        users: &[(String, String)],
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
        username: &str,
    ) -> StoreResult<Option<(User, Option<String>)>> {
        let row = sqlx::query("SELECT id, username, password_hash FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((User::from_row(&row)?, row.try_get("password_hash")?)))
            .transpose()
    }

    pub async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
        let row = sqlx::query("SELECT id, username FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| User::from_row(&r)).transpose()?)
    }

    pub async fn create_session(&self, user_id: &str, ttl_ms: i64) -> StoreResult<String> {
        let id = hex::encode(rand::random::<[u8; 32]>());
        sqlx::query("INSERT INTO sessions (id, user_id, expires_at) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(user_id)
            .bind(now_ms() + ttl_ms)
            .execute(&self.pool)
            .await?;
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
        .await?;
        Ok(row.map(|r| User::from_row(&r)).transpose()?)
    }

    pub async fn delete_session(&self, session_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(session_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
