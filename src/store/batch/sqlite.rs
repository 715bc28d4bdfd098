//! SQLite: a batch stored in one hand-off, on a connection of the store's own.
//!
//! Through sqlx a batch is five or six statements (the read of repeated client ids, `BEGIN`,
//! the bump, the insert, the mentions, `COMMIT`), each handed to the connection's thread and
//! its answer handed back: ten wake-ups across threads on the path of every message, each a
//! chance to wait for a core. Here the whole transaction is handed to a thread of the
//! writer's own at once, and runs through rusqlite (which links the SQLite sqlx bundles) on
//! a read-write connection kept for it (loadtest round 16).
//!
//! The thread is the writer's alone, as sqlx's connection thread was: tokio's blocking pool
//! also hashes passwords, and a flood of sign-ins must not queue the messages behind it.
//!
//! The transaction starts `IMMEDIATE`: it holds SQLite's write lock from its first statement,
//! so no other writer can store a client id between the read of repeats and the commit, and
//! no commit in between can turn that read stale. The connection waits for another's write
//! as the pool's do (`writing_pragmas`), on the writer's thread, not the runtime's.
//!
//! The connection is closed before the store's last fold of the log (`Store::close`), as the
//! inline reads' are: while it is open, the write-ahead log cannot be removed.

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::types::ToSql;
use rusqlite::{Connection, ErrorCode, OpenFlags, Statement, TransactionBehavior};
use sqlx::error::{DatabaseError, ErrorKind};
use tokio::sync::oneshot;

use super::sql::{bump_sql, insert_sql, mentions_sql, repeats_sql};
use super::{
    Outcome, Post, by_key, by_room, keyed, mentions_column, mentions_of, new_ids, numbered,
    outcomes, sort_repeats,
};
use crate::model::StoredMessage;
use crate::store::messages::message_from_row;
use crate::store::{now_ms, writing_pragmas};

/// Statements kept prepared. A batch's text depends on its numbers of rooms, rows and
/// mentions; a steady stream of messages comes in a few sizes, a burst in many.
const PREPARED: usize = 128;

/// A batch's posts and, index for index, what became of them.
type Stored = (Vec<Post>, Result<Vec<Outcome>, sqlx::Error>);

/// The writer: its thread, and the way to hand it work.
pub(in crate::store) struct SqliteWriter {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
}

enum Job {
    Store {
        posts: Vec<Post>,
        done: oneshot::Sender<Stored>,
    },
    /// Closes the connection and ends the thread.
    Close { done: oneshot::Sender<()> },
    /// Runs a test's look at the connection.
    #[cfg(test)]
    Inspect(Look),
}

/// A test's look at the writer's connection (`None`: none is open).
#[cfg(test)]
type Look = Box<dyn FnOnce(Option<&Connection>) + Send>;

impl SqliteWriter {
    /// Opens a connection to the SQLite file at `path`, which the pool has opened, and
    /// starts the thread that stores on it.
    pub(in crate::store) fn start(path: PathBuf) -> Result<SqliteWriter, sqlx::Error> {
        let conn = open(&path).map_err(failure)?;
        let (jobs, inbox) = mpsc::channel();
        let file = path.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || serve(&file, conn, inbox))
            .map_err(sqlx::Error::Io)?;
        Ok(SqliteWriter { path, jobs })
    }

    /// The database file written.
    pub(in crate::store) fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `posts` in one transaction on the writer's thread, and hands them back with
    /// what became of each.
    pub(super) async fn store(&self, posts: Vec<Post>) -> Stored {
        let (done, answer) = oneshot::channel();
        if let Err(mpsc::SendError(job)) = self.jobs.send(Job::Store { posts, done }) {
            // The writer has closed.
            let posts = match job {
                Job::Store { posts, .. } => posts,
                _ => Vec::new(),
            };
            return (posts, Err(sqlx::Error::PoolClosed));
        }
        answer
            .await
            .unwrap_or_else(|_| (Vec::new(), Err(sqlx::Error::WorkerCrashed)))
    }

    /// Closes the connection once the batches handed over before have been stored; a batch
    /// after this fails as on a closed pool.
    pub(in crate::store) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.jobs.send(Job::Close { done }).is_ok() {
            let _ = closed.await;
        }
    }

    /// What `look` finds on the writer's connection (`None`: none is open).
    #[cfg(test)]
    async fn inspect<T: Send + 'static>(
        &self,
        look: impl FnOnce(Option<&Connection>) -> T + Send + 'static,
    ) -> T {
        let (done, found) = oneshot::channel();
        let job = Job::Inspect(Box::new(move |conn| {
            let _ = done.send(look(conn));
        }));
        assert!(self.jobs.send(job).is_ok(), "the writer has closed");
        found.await.expect("the writer answers")
    }
}

/// The writer's thread: one job at a time, until the store closes it or is gone.
fn serve(path: &Path, conn: Connection, inbox: mpsc::Receiver<Job>) {
    let mut conn = Some(conn);
    let mut closed = false;
    while let Ok(job) = inbox.recv() {
        match job {
            // Batches handed over after the close are answered, not dropped unanswered.
            Job::Store { posts, done } if closed => {
                let _ = done.send((posts, Err(sqlx::Error::PoolClosed)));
            }
            Job::Store { posts, done } => {
                let stored = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    store_on(&mut conn, path, &posts)
                }))
                .unwrap_or_else(|_| {
                    // A half-done transaction goes with its connection.
                    conn = None;
                    tracing::error!(posts = posts.len(), "storing a batch of messages panicked");
                    Err(sqlx::Error::WorkerCrashed)
                });
                let _ = done.send((posts, stored));
            }
            Job::Close { done } => {
                closed = true;
                drop(conn.take());
                let _ = done.send(());
            }
            #[cfg(test)]
            Job::Inspect(look) => {
                // A test's failed assertion is reported by the test; the writer goes on.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| look(conn.as_ref())));
            }
        }
    }
}

/// Stores `posts` on `conn`, opened again first if a failure closed it.
fn store_on(
    conn: &mut Option<Connection>,
    path: &Path,
    posts: &[Post],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(open(path).map_err(failure)?),
    };
    let stored = write(c, posts);
    if let Err(e) = &stored
        && (connection_failed(e) || !c.is_autocommit())
    {
        // The next batch opens the file again. A transaction left open (its rollback
        // failed) would hold SQLite's write lock for as long as the connection lives.
        *conn = None;
    }
    stored.map_err(failure)
}

/// An error that says the connection, or the file under it, failed (or cannot be written,
/// perhaps only until its permissions are mended, or a restore put another file in its
/// place): not a constraint or a wait that ran out, after which the same connection serves
/// the next batch as well.
fn connection_failed(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if matches!(
            f.code,
            ErrorCode::SystemIoFailure
                | ErrorCode::ReadOnly
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::CannotOpen
                | ErrorCode::NotADatabase
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::ApiMisuse
        )
    )
}

/// A read-write connection set up as the pool's are (`Store::connect_with`), without
/// creating anything.
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // SQLite opens a file it may not write read-only rather than fail.
    if conn.is_readonly(rusqlite::DatabaseName::Main)? {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            Some(format!("{} cannot be written", path.display())),
        ));
    }
    conn.execute_batch(&writing_pragmas())?;
    conn.set_prepared_statement_cache_capacity(PREPARED);
    Ok(conn)
}

/// The transaction: the same statements as through the pool (`super::store`).
fn write(conn: &mut Connection, posts: &[Post]) -> rusqlite::Result<Vec<Outcome>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (repeats, fresh) = sort_repeats(posts, find_repeats(&tx, posts)?);
    let by_room = by_room(posts, &fresh);
    if by_room.is_empty() {
        return Ok(outcomes(posts.iter().map(|_| None).collect(), repeats));
    }
    let created_at_ms = now_ms();
    let ids = new_ids(posts);
    let counts: Vec<i64> = by_room.values().map(|i| i.len() as i64).collect();
    let mut values: Vec<&dyn ToSql> = Vec::with_capacity(2 * by_room.len());
    for (room_id, count) in by_room.keys().zip(&counts) {
        values.push(room_id);
        values.push(count);
    }
    let mut bump = tx.prepare_cached(&bump_sql(by_room.len()))?;
    bind_numbered(&mut bump, &values)?;
    let mut bumped = Vec::with_capacity(by_room.len());
    let mut rows = bump.raw_query();
    while let Some(row) = rows.next()? {
        bumped.push((row.get::<_, String>(0)?, row.get::<_, i64>(1)?));
    }
    drop(rows);
    drop(bump);
    let stored = numbered(posts, &by_room, &bumped, ids, created_at_ms);
    let rows: Vec<&StoredMessage> = stored.iter().flatten().collect();
    if !rows.is_empty() {
        let columns: Vec<(Option<&str>, Option<String>)> = rows
            .iter()
            .map(|m| {
                (
                    m.replying_to.as_ref().map(|q| q.id.as_str()),
                    mentions_column(m),
                )
            })
            .collect();
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(1 + 8 * rows.len());
        values.push(&created_at_ms);
        for (m, (reply_to, mentions)) in rows.iter().zip(&columns) {
            values.extend([
                &m.id as &dyn ToSql,
                &m.room_id,
                &m.seq,
                &m.author.id,
                &m.body,
                &m.client_id,
                reply_to,
                mentions,
            ]);
        }
        let mut insert = tx.prepare_cached(&insert_sql(rows.len()))?;
        bind_numbered(&mut insert, &values)?;
        insert.raw_execute()?;
        drop(insert);
        let mentions = mentions_of(&rows);
        if !mentions.is_empty() {
            let mut values: Vec<&dyn ToSql> = Vec::with_capacity(3 * mentions.len());
            for (user, room, seq) in &mentions {
                values.extend([user as &dyn ToSql, room, seq]);
            }
            let mut insert = tx.prepare_cached(&mentions_sql(mentions.len()))?;
            bind_numbered(&mut insert, &values)?;
            insert.raw_execute()?;
        }
    }
    tx.commit()?;
    Ok(outcomes(stored, repeats))
}

/// The messages the batch's authors already stored under its posts' client ids.
fn find_repeats(
    conn: &Connection,
    posts: &[Post],
) -> rusqlite::Result<std::collections::HashMap<(String, String), StoredMessage>> {
    let keyed = keyed(posts);
    if keyed.is_empty() {
        return Ok(Default::default());
    }
    let mut values: Vec<&dyn ToSql> = Vec::with_capacity(2 * keyed.len());
    for (author, client_id) in &keyed {
        values.push(author);
        values.push(client_id);
    }
    let mut select = conn.prepare_cached(&repeats_sql(keyed.len()))?;
    bind_numbered(&mut select, &values)?;
    let mut rows = select.raw_query();
    let mut found = Vec::new();
    while let Some(row) = rows.next()? {
        found.push(message_from_row(row)?);
    }
    Ok(by_key(found))
}

/// Binds `values` to a statement written with numbered placeholders: SQLite names `$3`
/// "$3", and numbers parameters in the order they first appear, which is not always 3.
fn bind_numbered(statement: &mut Statement<'_>, values: &[&dyn ToSql]) -> rusqlite::Result<()> {
    for index in 1..=statement.parameter_count() {
        let name = statement.parameter_name(index).unwrap_or_default();
        let value = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| values.get(n.checked_sub(1)?))
            .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_owned()))?;
        statement.raw_bind_parameter(index, value)?;
    }
    Ok(())
}

/// rusqlite's error as sqlx's, which the batch's posters and `Health` take: constraint
/// violations keep their kind, so that a repeat that met the unique index is tried again.
fn failure(error: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::Database(Box::new(Failure(error)))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(rusqlite::Error);

impl DatabaseError for Failure {
    fn message(&self) -> &str {
        match &self.0 {
            rusqlite::Error::SqliteFailure(_, Some(message)) => message,
            rusqlite::Error::SqliteFailure(f, None) => rusqlite::ffi::code_to_str(f.extended_code),
            _ => "SQLite failed",
        }
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        let rusqlite::Error::SqliteFailure(f, _) = &self.0 else {
            return None;
        };
        Some(Cow::Owned(f.extended_code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        let rusqlite::Error::SqliteFailure(f, _) = &self.0 else {
            return ErrorKind::Other;
        };
        match f.extended_code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::Executor;

    use super::*;
    use crate::chat::names::Username;
    use crate::store::test_db::TempDb;
    use crate::store::{Draft, Store};

    /// A post with a client id, a reply and a mention is stored on the writer's connection,
    /// and the pool reads back what it stored; the same client id again stores nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_is_stored_on_the_writers_connection() {
        let (_db, store, ann, room) = ann_in_general().await;
        let writer = store
            .sqlite_writer
            .clone()
            .expect("a SQLite file has a writer");
        let changes = || {
            writer.inspect(|conn| {
                let conn = conn.expect("an open connection");
                conn.query_row("SELECT total_changes()", [], |row| row.get::<_, i64>(0))
                    .expect("a count")
            })
        };
        assert_eq!(changes().await, 0, "nothing posted yet");
        let bob = user(&store, "bob").await;
        let first = store
            .post_message(&room.id, &ann, "hello")
            .await
            .expect("stored");
        // The room's bump, the message and its row in the search index.
        assert!(changes().await >= 2, "the batch went through the writer");
        let quoted = crate::model::Quoted::of(&first);
        let client_id = "00000000-0000-7000-8000-00000000c11d";
        let draft = Draft {
            room_id: &room.id,
            author: &bob,
            body: "hi @ann",
            client_id: Some(client_id),
            replying_to: Some(&quoted),
            mentions: std::slice::from_ref(&ann),
        };
        let post = || async { store.batcher.queue(draft, None).await?.await };
        let posted = post().await.expect("stored");
        assert!(!posted.repeat);
        assert_eq!(posted.message.seq, 2);
        let again = post().await.expect("answered");
        assert!(again.repeat);
        assert_eq!(again.message, posted.message);

        let page = store.latest_page(&room.id, 10).await.expect("a page");
        assert_eq!(page.messages.len(), 2);
        assert_eq!(page.messages[1], posted.message);
        assert_eq!(page.through, 2);
        let (mentioned,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM mentions")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(mentioned, 1);
        store.close().await;
    }

    /// While another connection holds SQLite's write lock, a batch waits for it rather than
    /// failing, and is stored once the other's write has committed. The batch reads first
    /// (its client id's repeats): begun any later than its first statement, its read would
    /// be stale after the other's commit, and SQLite would refuse it without waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_waits_for_another_connections_write() {
        let (_db, store, ann, room) = ann_in_general().await;
        let mut holder = store.pool.acquire().await.unwrap();
        holder.execute("BEGIN IMMEDIATE").await.unwrap();
        holder
            .execute("INSERT INTO settings (key, value) VALUES ('held', 'yes')")
            .await
            .unwrap();
        let draft = Draft {
            room_id: &room.id,
            author: &ann,
            body: "waits",
            client_id: Some("00000000-0000-7000-8000-0000000da175"),
            replying_to: None,
            mentions: &[],
        };
        let mut queued = store.batcher.queue(draft, None).await.unwrap();
        // A writer that did not wait would have failed by now.
        let early = tokio::time::timeout(Duration::from_millis(200), &mut queued).await;
        assert!(
            early.is_err(),
            "answered while the lock was held: {early:?}"
        );
        holder.execute("COMMIT").await.unwrap();
        let posted = queued.await.expect("stored once the lock was let go");
        assert_eq!(posted.message.seq, 1);
        drop(holder);
        store.close().await;
    }

    /// The writer's connection is set up as the pool's: it waits as long for another's
    /// write, checks references, leaves folding the log to the store's task, and cuts the
    /// log's file back once the log starts over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writers_connection_is_set_up_as_the_pools() {
        const SETTINGS: [&str; 5] = [
            "busy_timeout",
            "foreign_keys",
            "wal_autocheckpoint",
            "synchronous",
            "journal_size_limit",
        ];
        let (_db, store, _, _) = ann_in_general().await;
        let writer = store.sqlite_writer.clone().expect("a writer");
        let settings = writer
            .inspect(|conn| {
                let conn = conn.expect("an open connection");
                SETTINGS.map(|pragma| {
                    conn.query_row(&format!("PRAGMA {pragma}"), [], |row| row.get::<_, i64>(0))
                        .expect("a setting")
                })
            })
            .await;
        let mut pooled = store.pool.acquire().await.unwrap();
        let mut pool_settings = Vec::new();
        for pragma in SETTINGS {
            let (value,): (i64,) = sqlx::query_as(&format!("PRAGMA {pragma}"))
                .fetch_one(&mut *pooled)
                .await
                .expect("a setting");
            pool_settings.push(value);
        }
        drop(pooled);
        assert_eq!(settings.as_slice(), pool_settings.as_slice());
        // synchronous = NORMAL is 1; the log's file is cut back to 32 MiB.
        assert_eq!(pool_settings[1..], [1, 0, 1, 32 << 20]);
        assert!(pool_settings[0] >= 1000, "{pool_settings:?}");
        store.close().await;
    }

    /// A closed store's writer stores nothing more, and says why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_writer_stores_nothing() {
        let (db, store, ann, room) = ann_in_general().await;
        store.post_message(&room.id, &ann, "kept").await.unwrap();
        store.close().await;
        let refused = store.post_message(&room.id, &ann, "refused").await;
        assert!(
            matches!(
                &refused,
                Err(crate::store::StoreError::Batch(e)) if matches!(**e, sqlx::Error::PoolClosed)
            ),
            "{refused:?}"
        );
        let reopened = Store::connect(db.url()).await.expect("the same file");
        let page = reopened.latest_page(&room.id, 10).await.unwrap();
        assert_eq!(page.messages.len(), 1);
        reopened.close().await;
    }

    /// SQLite's constraint errors keep their kind on the way to sqlx's error, so that a
    /// batch that met the unique index is tried again.
    #[test]
    fn constraint_errors_keep_their_kind() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id TEXT PRIMARY KEY, other TEXT UNIQUE NOT NULL); \
             INSERT INTO t VALUES ('a', 'x');",
        )
        .unwrap();
        let kind = |sql: &str| match failure(conn.execute_batch(sql).unwrap_err()) {
            sqlx::Error::Database(e) => e.kind(),
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            kind("INSERT INTO t VALUES ('a', 'y')"),
            ErrorKind::UniqueViolation
        ));
        assert!(matches!(
            kind("INSERT INTO t VALUES ('b', 'x')"),
            ErrorKind::UniqueViolation
        ));
        assert!(matches!(
            kind("INSERT INTO t VALUES ('c', NULL)"),
            ErrorKind::NotNullViolation
        ));
        assert!(matches!(kind("SELECT * FROM nowhere"), ErrorKind::Other));
    }

    /// Numbered placeholders are bound by their number, wherever they first appear.
    #[test]
    fn placeholders_are_bound_by_number() {
        let conn = Connection::open_in_memory().unwrap();
        let mut statement = conn.prepare("SELECT $2 || $1 || $2").unwrap();
        bind_numbered(&mut statement, &[&"a", &"b"]).unwrap();
        let mut rows = statement.raw_query();
        let row = rows.next().unwrap().expect("a row");
        assert_eq!(row.get::<_, String>(0).unwrap(), "bab");
        drop(rows);
        let mut statement = conn.prepare("SELECT $3").unwrap();
        assert!(bind_numbered(&mut statement, &[&"a"]).is_err());
    }

    /// A fresh store with a user, ann, in a room, general.
    async fn ann_in_general() -> (TempDb, Store, crate::model::User, crate::model::Room) {
        let db = TempDb::new();
        let store = Store::connect(db.url()).await.expect("a fresh store");
        let ann = user(&store, "ann").await;
        let (room, _) = store
            .find_or_create_group("general", &ann)
            .await
            .expect("a room");
        (db, store, ann, room)
    }

    async fn user(store: &Store, name: &str) -> crate::model::User {
        store
            .create_user(&Username::parse(name).unwrap(), None, None)
            .await
            .expect("a user")
    }
}
