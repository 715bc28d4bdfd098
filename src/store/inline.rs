//! SQLite reads made on the calling thread, for the statements every connect and every
//! socket leaving its room run.
//!
//! sqlx runs each SQLite connection on a thread of its own: a statement is handed to it,
//! and its rows are handed back one by one, each hand-off a wake-up across threads. For
//! the session a connecting socket reads (a user and a few rooms), the hand-offs and the
//! scheduling they cause cost about what the read itself does (loadtest round 14); a
//! socket leaving a room asks whether it has anything to mark read. Here each statement
//! runs on a read-only connection of this process's own, on the thread that asks, in tens
//! of microseconds.
//!
//! The thread that asks runs other sockets' tasks too, so a read here does not wait and
//! does not run long: when SQLite is busy, when a read runs past `MOST_STEPS` (a user in
//! hundreds of rooms), or when anything else fails, it stops and the caller reads through
//! sqlx. What SQLite does not time — opening a connection (once per thread that reads),
//! reading from disk what the operating system does not hold in memory, a short sleep when
//! a read meets the write-ahead log being reset — is the rest of the worst case.
//!
//! The connections are closed before the pool (`close`): while any is open, SQLite's last
//! connection cannot fold the write-ahead log into the database file on its way out.

use std::os::raw::c_int;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

/// The most of SQLite's steps a read may take on the thread that asks, about a millisecond
/// of its work. Counted in steps, not time: a thread that loses its core for a moment under
/// load has not worked longer, and its read should not be done again through the pool.
const MOST_STEPS: u32 = 100_000;
/// SQLite's steps between two counts of them.
const STEPS_PER_LOOK: c_int = 1000;
/// Failures in a row, other than a read stopped or turned away, after which inline reads
/// are given up: the file cannot be opened, or holds something else than the pool's.
pub(super) const GIVE_UP_AFTER: u32 = 8;

pub(super) struct InlineReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Connections kept between reads: one for each thread that may read at once.
    kept: usize,
    most_steps: u32,
    steps_per_look: c_int,
    on: AtomicBool,
    failures: AtomicU32,
}

impl InlineReads {
    /// Reads of the SQLite file at `path` (see `sqlite_file`).
    pub(super) fn new(path: PathBuf) -> InlineReads {
        let kept = std::thread::available_parallelism().map_or(2, |n| n.get());
        InlineReads {
            path,
            idle: Mutex::new(Vec::with_capacity(kept)),
            kept,
            most_steps: MOST_STEPS,
            steps_per_look: STEPS_PER_LOOK,
            on: AtomicBool::new(true),
            failures: AtomicU32::new(0),
        }
    }

    /// Reads that stop past `most_steps`, looked at every `steps_per_look`.
    #[cfg(test)]
    pub(super) fn bounded(self, most_steps: u32, steps_per_look: c_int) -> InlineReads {
        InlineReads {
            most_steps,
            steps_per_look,
            ..self
        }
    }

    /// Whether reads are made here, or given up.
    #[cfg(test)]
    pub(super) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// What `read` finds on a connection of these, or `None` when it failed or ran too
    /// long, or inline reads are off (the caller then reads through the pool).
    pub(super) fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Option<T> {
        if !self.on.load(Ordering::Relaxed) {
            return None;
        }
        match self.try_read(read) {
            Ok(found) => {
                self.failures.store(0, Ordering::Relaxed);
                Some(found)
            }
            Err(e) if stopped_or_turned_away(&e) => {
                tracing::debug!(error = %e, "an inline read stopped; reading through the pool");
                None
            }
            Err(e) => {
                if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= GIVE_UP_AFTER
                    && self.on.swap(false, Ordering::Relaxed)
                {
                    tracing::warn!(
                        error = %e,
                        file = %self.path.display(),
                        "reading SQLite on the runtime's threads keeps failing; \
                         reading through the pool from now on"
                    );
                }
                None
            }
        }
    }

    pub(super) fn try_read<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let taken = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match taken {
            Some(conn) => conn,
            None => self.open()?,
        };
        let looks = self.most_steps / self.steps_per_look.max(1) as u32;
        let mut looked = 0;
        conn.progress_handler(
            self.steps_per_look,
            Some(move || {
                looked += 1;
                looked > looks
            }),
        );
        let found = read(&conn);
        let keep = match &found {
            Ok(_) => true,
            Err(e) => stopped_or_turned_away(e),
        };
        if keep {
            // Looked at under the lock `close` takes: a connection put back after it would
            // stay open, and keep the write-ahead log beside the file once the node stops.
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if self.on.load(Ordering::Relaxed) && idle.len() < self.kept {
                idle.push(conn);
            }
        }
        found
    }

    /// Turns inline reads off and closes every connection kept.
    pub(super) fn close(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        self.on.store(false, Ordering::Relaxed);
        idle.clear();
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // rusqlite waits 5 s by default; here a busy database is the pool's to wait for,
        // off the runtime's thread.
        conn.busy_timeout(Duration::ZERO)?;
        Ok(conn)
    }
}

/// A read stopped for running long, or turned away while the database was busy: the
/// connection is fine, and the next read may well succeed.
fn stopped_or_turned_away(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if matches!(
            f.code,
            ErrorCode::OperationInterrupted | ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked
        )
    )
}
