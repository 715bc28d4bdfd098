//! SQLite's write-ahead log folded into the database file by a task of its own, off the
//! path of every commit.
//!
//! By default the connection whose commit takes the log past 1,000 pages folds it in (a
//! checkpoint) before that commit returns: it copies the pages and syncs the file, several
//! milliseconds. The message writer's commits took that turn about once a hundred
//! messages, and each of those messages reached its room that much later: wirechat's p99
//! in a light fan-out was ~7 ms where the bare server's was 2 ms, and 2.6 ms with no
//! checkpoints at all (loadtest round 15). The pool's connections and the message writer's
//! (`batch::sqlite`) therefore never checkpoint on commit, and this task folds the log in
//! every `EVERY`, in the way that waits for nobody (`PASSIVE`): writers go on appending
//! meanwhile, and the log starts over once a checkpoint has caught up with it.
//!
//! Under writes without a pause, a checkpoint that waits for nobody may never catch up at
//! the moment a writer begins, and the log would grow for as long as the writes last (by
//! the megabyte a second). Past `RESTART_AT` pages the fold also tries to start the log
//! over, which takes a moment when no one writes and every reader sees the newest data. It
//! does not wait for that moment (a writer would wait behind it, and a backup reading for
//! minutes would hold every write), so it tries again at each fold until it finds one.

use std::path::Path;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::Row;
use tokio::sync::watch;

/// How often the log is folded in: often enough that it holds a fraction of a second of
/// writes, each fold a short one.
const EVERY: Duration = Duration::from_millis(250);

/// A log this long (16 MiB in SQLite's default pages of 4 KiB) is started over, not only
/// folded in.
const RESTART_AT: i64 = 4096;

/// What one fold did.
#[derive(Debug, PartialEq, Eq)]
struct Fold {
    /// Pages of the log in the database file now.
    copied: i64,
    /// Whether the log was long enough to be started over.
    restarted: bool,
}

/// Folds the log in once; past `restart_at` pages, also tries to start it over.
async fn fold(pool: &AnyPool, restart_at: i64) -> Result<Fold, sqlx::Error> {
    // One row: whether a writer held it up, the log's pages, and how many of them are in
    // the database file now.
    let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(pool)
        .await?;
    let log: i64 = row.try_get(1).unwrap_or(0);
    let copied: i64 = row.try_get(2).unwrap_or(0);
    if log < restart_at {
        return Ok(Fold {
            copied,
            restarted: false,
        });
    }
    // Without the busy wait the pool's connections have: the moment is there or it is not.
    let mut conn = pool.acquire().await?;
    sqlx::query("PRAGMA busy_timeout = 0")
        .execute(&mut *conn)
        .await?;
    let restart = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
        .fetch_one(&mut *conn)
        .await;
    let waits = sqlx::query(super::BUSY_TIMEOUT).execute(&mut *conn).await;
    if waits.is_err() {
        // A connection that would not wait would turn writers away: not back to the pool.
        conn.detach();
    }
    let row = restart?;
    Ok(Fold {
        copied: row.try_get(2).unwrap_or(copied),
        restarted: row.try_get::<i64, _>(0).is_ok_and(|busy| busy == 0),
    })
}

/// Folds the log in every `EVERY` until the pool closes; `folded` counts the log's pages
/// copied into the database file so far.
pub(super) async fn fold_log_until_closed(pool: AnyPool, folded: watch::Sender<u64>) {
    let mut closed = pool.close_event();
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    // SQLite counts the pages copied since the log last started over.
    let mut copied_before = 0;
    loop {
        tokio::select! {
            _ = &mut closed => return,
            // The store is gone without being closed.
            _ = folded.closed() => return,
            _ = ticks.tick() => {}
        }
        match fold(&pool, RESTART_AT).await {
            Ok(Fold { copied, restarted }) => {
                failing = false;
                let new = if copied >= copied_before {
                    copied - copied_before
                } else {
                    copied
                };
                copied_before = if restarted { 0 } else { copied };
                if new > 0 {
                    folded.send_modify(|n| *n += new as u64);
                }
            }
            // Closing: `Store::close` folds the rest in once the pool has closed.
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "folding SQLite's write-ahead log into the database file");
                }
                failing = true;
            }
        }
    }
}

/// Folds all of the log at `path` into the database file and empties it, on a connection
/// of its own, once the pool has closed. The pool's last connection to close would do it,
/// but when several close at once on their own threads, each may find another still open.
/// Whether the log was emptied: not when something else still reads or writes it.
pub(super) fn fold_all(path: &Path) -> rusqlite::Result<bool> {
    // Not created: a file moved away meanwhile is not replaced by an empty one.
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        row.get::<_, i64>(0).map(|busy| busy == 0)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::chat::names::Username;
    use crate::model::{Room, User};
    use crate::store::Store;
    use crate::store::test_db::TempDb;

    /// A store on a SQLite file of its own.
    struct OnFile {
        store: Store,
        file: TempDb,
    }

    impl OnFile {
        async fn new() -> OnFile {
            let file = TempDb::new();
            let store = Store::connect(file.url()).await.expect("a fresh store");
            OnFile { store, file }
        }

        /// Ann, and a room of hers to post to.
        async fn ann_and_room(&self) -> (User, Room) {
            let name = Username::parse("ann").expect("a name");
            let ann = self
                .store
                .create_user(&name, None, None)
                .await
                .expect("a user");
            let (room, _) = self
                .store
                .find_or_create_group("log", &ann)
                .await
                .expect("a room");
            (ann, room)
        }

        /// Closes the store, then removes its file.
        async fn close(self) {
            self.store.close().await;
            drop(self.file);
        }
    }

    /// No commit folds the log in (every connection of the pool is told not to), and what
    /// a message's commit adds to the log is folded in by the task.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_folded_in_by_its_task_and_not_by_commits() {
        let db = OnFile::new().await;
        let store = &db.store;
        let connections = (0..3).map(|_| store.pool.acquire());
        for conn in futures_util::future::join_all(connections).await {
            let mut conn = conn.expect("a connection");
            let (pages,): (i64,) = sqlx::query_as("PRAGMA wal_autocheckpoint")
                .fetch_one(&mut *conn)
                .await
                .expect("read");
            assert_eq!(
                pages, 0,
                "a commit on this connection would fold the log in"
            );
        }
        let (ann, room) = db.ann_and_room().await;
        // What the task folds from here on is the message's, or what it had not folded.
        let mut folded = store.log_folded.clone();
        let before = *folded.borrow_and_update();
        store
            .post_message(&room.id, &ann, "hello")
            .await
            .expect("stored");
        tokio::time::timeout(Duration::from_secs(10), folded.wait_for(|&n| n > before))
            .await
            .expect("folded in within 10 s")
            .expect("the task runs");

        db.close().await;
    }

    /// A log past the length it may reach is started over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_log_is_started_over() {
        let db = OnFile::new().await;
        let store = &db.store;
        let (ann, room) = db.ann_and_room().await;
        store
            .post_message(&room.id, &ann, "hello")
            .await
            .expect("stored");

        // The task folds at times of its own, and one fold turns another away at once:
        // the test's is tried until it is the only one.
        let mut long = super::fold(&store.pool, 1).await.expect("folded");
        for _ in 0..1000 {
            if long.restarted {
                break;
            }
            tokio::task::yield_now().await;
            long = super::fold(&store.pool, 1).await.expect("folded");
        }
        assert!(long.restarted, "{long:?}");
        assert!(long.copied > 0, "{long:?}");
        // The log starts over: the next message's pages are the whole of it.
        store
            .post_message(&room.id, &ann, "again")
            .await
            .expect("stored");
        let (_, log, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&store.pool)
            .await
            .expect("read");
        assert!(
            log < long.copied,
            "the log went on from {} to {log}",
            long.copied
        );

        db.close().await;
    }
}
