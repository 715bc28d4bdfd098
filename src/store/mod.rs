//! Persistence: users, sessions, rooms, memberships and messages, on SQLite (the embedded
//! default) or PostgreSQL, through one `sqlx::AnyPool`.
//!
//! Every statement here is written once, in the SQL both dialects share (`$1` placeholders,
//! `ON CONFLICT`, `RETURNING`); only the migrations are kept per dialect. Ids are stored as
//! text and times as milliseconds since the epoch, the types the Any driver carries faithfully.
//! On SQLite, two things also run outside the pool, through rusqlite on the same library:
//! the session every connect reads, and whether a socket leaving a room has anything to
//! mark read, are read on the calling thread (`inline`), and each batch of new messages is
//! stored in one hand-off (`batch::sqlite`).

mod batch;
mod checkpoint;
mod columns;
mod health;
mod inline;
#[macro_use]
mod messages;
mod purge;
mod reactions;
mod rooms;
mod search;
mod users;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AnyPool, Connection, Executor};

pub use batch::{AfterCommit, Queued};
use health::Health;
pub use messages::{Change, Draft, Page, Posted};
pub use purge::{Purged, purge_now_and_then};
pub use reactions::Reacted;
pub use rooms::SignedIn;
pub use search::{Results, Searched};
pub use users::LoginFailures;

/// Which database the pool talks to; decides the migration folder and connection set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the row (taken username, existing room).
    #[error("already exists")]
    Conflict,
    #[error(transparent)]
    Database(sqlx::Error),
    /// The URL names no database wirechat speaks to.
    #[error(
        "unsupported database URL scheme `{0}`: use `sqlite://<file>` (or just a file \
         path) or `postgres://user[:password]@host[:port]/database`"
    )]
    UnknownScheme(String),
    /// A pool too small for the store's own writers and anything else besides.
    #[error(
        "a database pool of {size} connections is too small: the node's message writers \
         may keep {writers} of them, so it needs at least {}", writers + 1
    )]
    PoolTooSmall { size: u32, writers: u32 },
    /// The database server could not be reached at all; says where, and why.
    #[error("cannot reach PostgreSQL at {at}: {why}")]
    Unreachable { at: String, why: String },
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The transaction storing a batch of messages failed; every message in it shares the
    /// error, and none was stored.
    #[error("storing a batch of messages: {0}")]
    Batch(std::sync::Arc<sqlx::Error>),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// How long a SQLite connection that writes (the pool's, and the message writer's of
/// `batch::sqlite`) waits for another's write to end.
const BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 10000";

/// The settings of every SQLite connection that writes: the pool's, and the message
/// writer's (`batch::sqlite`). The busy timeout turns writer contention into a short wait,
/// not an error; the log is folded in by a task of its own (`checkpoint`), never by a
/// commit; and once the log starts over, its file is cut back to 32 MiB, so that a burst
/// that grew it gives the disk back (twice what a steady stream lets it reach before the
/// task starts it over, so a steady stream never cuts it).
fn writing_pragmas() -> String {
    format!(
        "PRAGMA synchronous = NORMAL; {BUSY_TIMEOUT}; PRAGMA foreign_keys = ON; \
         PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 33554432;"
    )
}

/// A pooled PostgreSQL connection idle this long is pinged before use...
const PING_WHEN_IDLE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// Where new messages go to be stored in batches (see `batch`).
    batcher: batch::Batcher,
    /// Whether statements have been failing for want of a working connection.
    health: Arc<Health>,
    /// Searches running on this node, at most (see `search`).
    searches: Arc<tokio::sync::Semaphore>,
    /// SQLite's reads on the calling thread, for what every connect and every departure
    /// from a room read (see `inline`).
    inline: Option<Arc<inline::InlineReads>>,
    /// SQLite's connection of its own for batches of messages (see `batch::sqlite`).
    sqlite_writer: Option<Arc<batch::SqliteWriter>>,
    /// Sessions read on the calling thread, and through the pool (for `/metrics`).
    session_reads: Arc<SessionReads>,
    /// SQLite's write-ahead log's pages folded into the database file (see `checkpoint`).
    #[cfg_attr(not(test), allow(dead_code))]
    log_folded: tokio::sync::watch::Receiver<u64>,
}

/// Where the sessions connects and pages read were read, so far.
#[derive(Default)]
struct SessionReads {
    inline: std::sync::atomic::AtomicU64,
    pooled: std::sync::atomic::AtomicU64,
}

/// The SQLite file `url` names, which the pool has opened, for connections of the store's
/// own (`inline`, `batch::sqlite`); `None` where another connection could not open the same
/// database the same way: one in memory, a URI file name, a VFS or immutable file of its
/// own, or one the pool opens read-only.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let (_, query) = url.split_once('?').unwrap_or((url, ""));
    if url.contains(":memory:")
        || query.split('&').any(|p| {
            p == "mode=memory"
                || p == "mode=ro"
                || p.starts_with("vfs=")
                || p.starts_with("immutable=")
        })
    {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let name = options.get_filename();
    if name.as_os_str().is_empty() || name.to_string_lossy().starts_with("file:") {
        return None;
    }
    // Absolute, so that the file stays the pool's whatever the working directory.
    std::fs::canonicalize(name).ok()
}

/// Connections a node's pool may hold when not told otherwise. A SQLite connection is a
/// file handle; PostgreSQL's are a server process each, of the server's 100 by default
/// (see the README's Operating section for how many nodes that allows).
fn default_pool_size(dialect: Dialect) -> u32 {
    match dialect {
        Dialect::Sqlite => 8,
        Dialect::Postgres => 16,
    }
}

impl Store {
    /// Connects to `url` (`sqlite:…` or `postgres://…`) with the dialect's default pool
    /// size and applies the dialect's migrations.
    pub async fn connect(url: &str) -> StoreResult<Store> {
        Store::connect_with(url, None).await
    }

    /// Connects to `url` with a pool of at most `pool_size` connections (`None`: the
    /// dialect's default) and applies the dialect's migrations.
    pub async fn connect_with(url: &str, pool_size: Option<u32>) -> StoreResult<Store> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = normalise_url(url)?;
        let size = pool_size.unwrap_or_else(|| default_pool_size(dialect));
        let writers = batch::writers(dialect);
        if size <= writers {
            return Err(StoreError::PoolTooSmall { size, writers });
        }
        let options = AnyConnectOptions::from_str(&url).map_err(StoreError::Database)?;
        if dialect == Dialect::Postgres {
            reach_postgres(&url).await?;
        }
        let health = Arc::new(Health::default());
        let pool = match dialect {
            Dialect::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(size)
                    .acquire_timeout(Duration::from_secs(10))
                    // A SQLite connection is a file handle on its own thread; it cannot drop
                    // like a network connection. The default ping on every acquire would be
                    // one more thread round trip per statement (half of a connect's hops).
                    .test_before_acquire(false)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL lets readers proceed while one writer commits.
                            let pragmas =
                                format!("PRAGMA journal_mode = WAL; {}", writing_pragmas());
                            conn.execute(pragmas.as_str()).await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
                    .map_err(StoreError::Database)?
            }
            Dialect::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(size)
                    .acquire_timeout(Duration::from_secs(10))
                    // A ping before every statement would be one more round trip to
                    // PostgreSQL each time, and its CPU, on every connect and post. A connection that
                    // was just in use is alive; one that sat idle (across a restart, say),
                    // or any while statements are failing, is checked before use.
                    .test_before_acquire(false)
                    .before_acquire({
                        let health = health.clone();
                        move |conn, meta| {
                            let failing = health.failed_recently();
                            Box::pin(async move {
                                if meta.idle_for >= PING_WHEN_IDLE || failing {
                                    conn.ping().await?;
                                }
                                Ok(true)
                            })
                        }
                    })
                    .connect_with(options)
                    .await
                    .map_err(StoreError::Database)?
            }
        };
        // On SQLite, sessions are read and batches stored beside the pool where the file can
        // be opened again.
        let file = match dialect {
            Dialect::Sqlite => sqlite_file(&url),
            Dialect::Postgres => None,
        };
        let sqlite_writer = match &file {
            Some(file) => Some(Arc::new(
                batch::SqliteWriter::start(file.clone()).map_err(StoreError::Database)?,
            )),
            None => None,
        };
        let batcher = batch::Batcher::start(&pool, dialect, sqlite_writer.clone(), health.clone());
        let (folded, log_folded) = tokio::sync::watch::channel(0);
        if dialect == Dialect::Sqlite {
            tokio::spawn(checkpoint::fold_log_until_closed(pool.clone(), folded));
        }
        let store = Store {
            pool,
            dialect,
            batcher,
            health,
            searches: Arc::new(tokio::sync::Semaphore::new(search::AT_ONCE)),
            log_folded,
            sqlite_writer,
            session_reads: Arc::default(),
            inline: file.map(|file| Arc::new(inline::InlineReads::new(file))),
        };
        store.migrate().await?;
        let keyed = store.backfill_name_keys().await?;
        if keyed > 0 {
            tracing::info!(
                accounts = keyed,
                "gave older usernames their lookalike keys"
            );
        }
        Ok(store)
    }

    async fn migrate(&self) -> StoreResult<()> {
        match self.dialect {
            Dialect::Sqlite => sqlx::migrate!("migrations/sqlite").run(&self.pool).await?,
            Dialect::Postgres => {
                sqlx::migrate!("migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
        }
        Ok(())
    }

    /// `err` as a `StoreError`, noted if it says the connection failed. Every statement's
    /// error passes here (there is no `From<sqlx::Error>`), so none escapes the noting.
    fn failed(&self, err: sqlx::Error) -> StoreError {
        self.health.note(&err);
        StoreError::Database(err)
    }

    /// Like `failed`, but a unique-constraint violation is `Conflict`.
    fn conflict_or(&self, err: sqlx::Error) -> StoreError {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
            _ => self.failed(err),
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Sessions read so far on the calling thread (SQLite, see `inline`) and through the
    /// pool (PostgreSQL, and SQLite's reads that stopped or failed there).
    pub fn session_reads(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.session_reads.inline.load(Relaxed),
            self.session_reads.pooled.load(Relaxed),
        )
    }

    /// The most connections this store's pool may hold.
    pub fn pool_size(&self) -> u32 {
        self.pool.options().get_max_connections()
    }

    /// The connections this store's pool holds now, in use or idle (or being opened).
    pub fn connections(&self) -> u32 {
        self.pool.size()
    }

    /// The connections this store's pool holds that nothing uses now.
    pub fn idle_connections(&self) -> usize {
        self.pool.num_idle()
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    pub async fn close(&self) {
        // SQLite's write-ahead log is folded into the database file by the last connection
        // to close: not the pool's while the inline reads' or the writer's are open, and
        // when several of the pool's close at once each may find another still open, so
        // one of its own ends it.
        if let Some(inline) = &self.inline {
            inline.close();
        }
        // Messages are not stored once the pool they are published with has closed.
        if let Some(writer) = &self.sqlite_writer {
            writer.close().await;
        }
        self.pool.close().await;
        if let Some(writer) = &self.sqlite_writer {
            let path = writer.path().to_path_buf();
            match tokio::task::spawn_blocking(move || checkpoint::fold_all(&path)).await {
                Ok(Ok(true)) | Err(_) => {}
                Ok(Ok(false)) => tracing::warn!(
                    "SQLite's write-ahead log is left beside the database file: something \
                     else still reads or writes it"
                ),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "folding SQLite's write-ahead log in at shutdown")
                }
            }
        }
    }

    /// The cookie-signing secret shared by every node on this database: the first node to
    /// start generates it, everyone else (and every restart) reads the same value.
    pub async fn shared_secret(&self) -> StoreResult<String> {
        let candidate = hex::encode(rand::random::<[u8; 32]>());
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ('cookie_secret', $1) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&candidate)
        .execute(&self.pool)
        .await.map_err(|e| self.failed(e))?;
        let (value,): (String,) =
            sqlx::query_as("SELECT value FROM settings WHERE key = 'cookie_secret'")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.failed(e))?;
        Ok(value)
    }
}

/// How long start-up waits for PostgreSQL to answer a connection at all.
const REACH_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens (and closes) one connection to PostgreSQL, so that a server that is not there
/// fails start-up at once, saying where it was looked for. The pool would instead retry a
/// refused connection until its acquire timeout and then say only that it timed out.
async fn reach_postgres(url: &str) -> StoreResult<()> {
    let options = PgConnectOptions::from_str(url).map_err(StoreError::Database)?;
    let at = format!("{}:{}", options.get_host(), options.get_port());
    match tokio::time::timeout(REACH_TIMEOUT, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(sqlx::Error::Io(e))) => {
            let why = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                "connection refused (is it running, and listening on that port?)".to_owned()
            } else {
                e.to_string()
            };
            Err(StoreError::Unreachable { at, why })
        }
        // The server answered and refused us (a wrong password, a missing database): its
        // own message says why.
        Ok(Err(e)) => Err(StoreError::Database(e)),
        Err(_) => Err(StoreError::Unreachable {
            at,
            why: format!("no answer within {} s", REACH_TIMEOUT.as_secs()),
        }),
    }
}

/// Tells the dialect from the URL, and lets SQLite create its file when it is missing.
/// Any other scheme is refused: taken for a file name, `mysql://…` used to become an
/// empty SQLite database.
fn normalise_url(url: &str) -> StoreResult<(Dialect, String)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Dialect::Postgres, url.to_owned()));
    }
    if let Some((scheme, _)) = url.split_once("://")
        && scheme != "sqlite"
    {
        return Err(StoreError::UnknownScheme(scheme.to_owned()));
    }
    let url = if url.starts_with("sqlite:") {
        url.to_owned()
    } else {
        // A bare path is the friendliest way to name a file.
        format!("sqlite://{url}")
    };
    let url = if url.contains('?') || url.contains(":memory:") {
        url
    } else {
        format!("{url}?mode=rwc")
    };
    Ok((Dialect::Sqlite, url))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A SQLite file of a test's own, removed with its log when dropped.
#[cfg(test)]
mod test_db {
    pub(super) struct TempDb(pub(super) std::path::PathBuf);

    impl TempDb {
        pub(super) fn new() -> TempDb {
            let name = format!("wirechat-store-{}.db", uuid::Uuid::new_v4());
            TempDb(std::env::temp_dir().join(name))
        }

        pub(super) fn url(&self) -> &str {
            self.0.to_str().expect("a UTF-8 temp path")
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_dialect() {
        let normalised = |url| normalise_url(url).expect("a known scheme");
        assert_eq!(
            normalised("postgres://u@h/db"),
            (Dialect::Postgres, "postgres://u@h/db".into())
        );
        assert_eq!(
            normalised("wirechat.db"),
            (Dialect::Sqlite, "sqlite://wirechat.db?mode=rwc".into())
        );
        assert_eq!(
            normalised("sqlite:x.db?mode=ro"),
            (Dialect::Sqlite, "sqlite:x.db?mode=ro".into())
        );
    }

    #[test]
    fn unknown_schemes_are_refused() {
        for (url, scheme) in [
            ("mysql://u:p@h/db", "mysql"),
            ("http://h/db", "http"),
            ("postgress://u@h/db", "postgress"),
        ] {
            match normalise_url(url) {
                Err(StoreError::UnknownScheme(s)) => assert_eq!(s, scheme),
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
