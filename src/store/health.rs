//! Whether a store's statements have lately been failing for want of a working connection.
//!
//! Pooled PostgreSQL connections are not pinged when they come back to the pool
//! (`vendor/sqlx-core`), so after a restart of PostgreSQL the broken ones stay there until
//! used. A connection idle for a while is pinged before use anyway; for a short time after
//! a connection failure, every connection is, which clears out the rest of the broken ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long after a connection failure every connection is pinged before use.
const PING_AFTER_FAILURE: Duration = Duration::from_secs(5);

pub(super) struct Health {
    started: Instant,
    /// When a statement last failed for want of a working connection, in milliseconds
    /// after `started` (0: never).
    last_failure_ms: AtomicU64,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            started: Instant::now(),
            last_failure_ms: AtomicU64::new(0),
        }
    }
}

impl Health {
    fn millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Notes `err` if it says the connection, not the statement, failed. (A pool that
    /// timed out is busy, not broken: pinging then would only add to its load.)
    pub(super) fn note(&self, err: &sqlx::Error) {
        if connection_failed(err) {
            self.last_failure_ms
                .store(self.millis().max(1), Ordering::Relaxed);
        }
    }

    pub(super) fn failed_recently(&self) -> bool {
        let last = self.last_failure_ms.load(Ordering::Relaxed);
        last != 0 && self.millis().saturating_sub(last) < PING_AFTER_FAILURE.as_millis() as u64
    }
}

fn connection_failed(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL's "connection exception" class, and its server shutting down.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P0")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_failures_start_the_pinging() {
        let health = Health::default();
        health.note(&sqlx::Error::RowNotFound);
        health.note(&sqlx::Error::PoolTimedOut);
        assert!(!health.failed_recently());
        health.note(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(health.failed_recently());
    }

    #[test]
    fn each_store_has_its_own_health() {
        let failing = Health::default();
        let other = Health::default();
        failing.note(&sqlx::Error::WorkerCrashed);
        assert!(failing.failed_recently());
        assert!(!other.failed_recently());
    }
}
