//! Forgetting what nobody can use any more: expired sessions, old failed log-ins, and guest
//! accounts that can no longer sign in and never posted (their name is not on any message,
//! so no history changes). One node at a time purges, a batch per statement.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Store, StoreResult, now_ms};

/// How often a node tries to purge...
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// ...and how long the first try waits after start (a fleet restarting together spreads
/// its tries over the hour).
const FIRST_PURGE_AFTER: Duration = Duration::from_secs(60);
/// Rows one statement deletes at most: a purge never holds locks for long.
const BATCH: i64 = 500;
/// Failed log-ins are remembered this long after the last one.
const LOGIN_FAILURES_KEPT_MS: i64 = 24 * 3_600_000;

/// What one purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub sessions: u64,
    pub login_failures: u64,
    pub guests: u64,
}

impl Store {
    /// Purges, if no other node is doing so, what expired before `now_ms`, and guests
    /// created before `guests_before_ms`; None when another node holds the turn.
    pub async fn purge(&self, now_ms: i64, guests_before_ms: i64) -> StoreResult<Option<Purged>> {
        if !self.take_purge_turn(now_ms).await? {
            return Ok(None);
        }
        let mut purged = Purged::default();
        loop {
            let n = sqlx::query(
                "DELETE FROM sessions WHERE id IN \
                 (SELECT id FROM sessions WHERE expires_at < $1 LIMIT $2)",
            )
            .bind(now_ms)
            .bind(BATCH)
            .execute(&self.pool)
            .await
            .map_err(|e| self.failed(e))?
            .rows_affected();
            purged.sessions += n;
            if n < BATCH as u64 {
                break;
            }
        }
        purged.login_failures =
            sqlx::query("DELETE FROM login_failures WHERE last_failure_at < $1")
                .bind(now_ms - LOGIN_FAILURES_KEPT_MS)
                .execute(&self.pool)
                .await
                .map_err(|e| self.failed(e))?
                .rows_affected();
        loop {
            // A guest has no password: with no session left, nobody can be them again.
            let guests: Vec<(String,)> = sqlx::query_as(
                "SELECT u.id FROM users u WHERE u.password_hash IS NULL AND u.created_at < $1 \
                 AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.user_id = u.id) \
                 AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.author_id = u.id) LIMIT $2",
            )
            .bind(guests_before_ms)
            .bind(BATCH)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
            if guests.is_empty() {
                break;
            }
            let list = (1..=guests.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            // Their conversations go too: the other person could neither open nor hide
            // one with nobody in it.
            let rooms = format!(
                "DELETE FROM rooms WHERE kind = 'direct' AND id IN \
                 (SELECT room_id FROM memberships WHERE user_id IN ({list}))"
            );
            let users = format!("DELETE FROM users WHERE id IN ({list})");
            let mut tx = self.pool.begin().await.map_err(|e| self.failed(e))?;
            for sql in [&rooms, &users] {
                let mut query = sqlx::query(sql);
                for (id,) in &guests {
                    query = query.bind(id);
                }
                let deleted = query
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.failed(e))?
                    .rows_affected();
                if sql == &users {
                    purged.guests += deleted;
                }
            }
            tx.commit().await.map_err(|e| self.failed(e))?;
            if (guests.len() as i64) < BATCH {
                break;
            }
        }
        Ok(Some(purged))
    }

    /// Takes the purge for the next half period, unless another node holds it: one node at
    /// a time purges, whichever asks first.
    async fn take_purge_turn(&self, now_ms: i64) -> StoreResult<bool> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ('purge_turn_until', '0') \
             ON CONFLICT (key) DO NOTHING",
        )
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        let until = now_ms + PURGE_EVERY.as_millis() as i64 / 2;
        let taken = sqlx::query(
            "UPDATE settings SET value = $1 WHERE key = 'purge_turn_until' \
             AND CAST(value AS BIGINT) < $2",
        )
        .bind(until.to_string())
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?
        .rows_affected();
        Ok(taken == 1)
    }
}

/// Purges now and then until `stop`, keeping guests `guest_retention` after they joined.
pub async fn purge_now_and_then(store: Store, guest_retention: Duration, stop: CancellationToken) {
    let mut wait = FIRST_PURGE_AFTER;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = PURGE_EVERY;
        let now = now_ms();
        match store
            .purge(now, now - guest_retention.as_millis() as i64)
            .await
        {
            Ok(Some(purged)) if purged != Purged::default() => {
                tracing::info!(?purged, "purged what nobody can use any more");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purge failed; trying again later"),
        }
    }
}
