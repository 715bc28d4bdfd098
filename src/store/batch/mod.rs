//! Group commit: the messages posted on this node are stored by a few writer tasks, each
//! taking whatever has queued up and storing it in one transaction.
//!
//! One transaction per message would cap PostgreSQL at the rate of WAL flushes (about 1,200
//! a second here) and make every post to a room wait on that room's row lock; on SQLite the
//! pool's writers would meet in the busy handler. A writer instead takes up to `MAX_BATCH` queued
//! posts (never waiting for more: a lone message is stored at once), and per room bumps
//! `last_seq` by the number of its posts, then inserts every row with one statement; on
//! PostgreSQL both are one statement, committed on its own. On a SQLite file the whole
//! transaction is handed at once to a thread that writes on a connection of its own
//! (`sqlite`), not statement by statement to the pool's.
//!
//! Store before send still holds: a poster's answer (and the after-commit step that
//! publishes the message) comes only once the batch has committed, and when the batch fails
//! every poster in it gets the error. A room always goes to the same writer, and each
//! writer hands committed batches to one publishing task, so a room's messages are
//! published in seq order.
//!
//! A post may carry its client's id for it: a batch first looks up which of those its
//! authors already used, and answers those posts with the message stored then, storing and
//! publishing nothing. Two nodes storing the same one at once meet in the unique index; the
//! batch that loses is stored again, and finds it.

mod sql;
mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection};
use tokio::sync::{mpsc, oneshot};

use self::sql::{bump_and_insert_sql, bump_sql, insert_sql, mentions_sql, repeats_sql};
pub(super) use self::sqlite::SqliteWriter;
use super::health::Health;
use super::messages::{Draft, Person, Posted, message_from_row, to_json_column};
use super::{Dialect, StoreError, StoreResult, now_ms};
use crate::model::{Quoted, StoredMessage, User};

/// Posts stored in one transaction, at most. It also bounds the statement's parameters
/// (eight a row, three a mention), well under SQLite's and PostgreSQL's limits.
const MAX_BATCH: usize = 256;
/// Posts waiting for each writer before posters wait to queue theirs.
const QUEUE: usize = 4 * MAX_BATCH;
/// How often a batch is tried when it meets another writer's client ids.
const ATTEMPTS: usize = 5;
/// A batch tried again waits up to this many milliseconds times its attempt first.
const RETRY_JITTER_MS: u64 = 5;
/// Committed batches waiting to be published, per writer.
const PUBLISH_QUEUE: usize = 16;

/// What runs once a message is committed, before its poster is answered. The returned
/// future is first polled in seq order within its room; whatever it then waits for, it
/// finishes alongside the rest of its batch.
pub type AfterCommit = Box<dyn FnOnce(&StoredMessage) -> BoxFuture<'static, ()> + Send + Sync>;

struct Post {
    room_id: String,
    author: User,
    body: String,
    client_id: Option<String>,
    replying_to: Option<Box<Quoted>>,
    mentions: Vec<User>,
    then: Option<AfterCommit>,
    reply: oneshot::Sender<StoreResult<Posted>>,
    _counted: Counted,
}

/// Counts a post among those waiting, from its queueing until its batch's outcome is
/// known (the post is dropped then).
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(waiting: &Arc<AtomicUsize>) -> Counted {
        waiting.fetch_add(1, Ordering::Relaxed);
        Counted(waiting.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What became of one post of a batch.
#[derive(Debug)]
enum Outcome {
    Stored(StoredMessage),
    /// Its author had posted it already (same client id): the message stored then.
    Repeat(StoredMessage),
    /// Its room does not exist.
    NoRoom,
}

/// A batch's posts and, index for index, what became of them.
struct Committed {
    posts: Vec<Post>,
    stored: Result<Vec<Outcome>, Arc<sqlx::Error>>,
}

/// The queues in front of this node's writers.
#[derive(Clone)]
pub(super) struct Batcher {
    writers: Arc<[mpsc::Sender<Post>]>,
    /// Posts queued or in a batch not yet committed.
    waiting: Arc<AtomicUsize>,
}

/// How many writers a node runs, each keeping a pooled connection of its own once it has
/// stored something (on a SQLite file, a connection beside the pool instead, `sqlite`):
/// exactly one on SQLite, which admits one writer at a time anyway; several on PostgreSQL,
/// so that one batch's commit overlaps the next one's statements.
pub(super) fn writers(dialect: Dialect) -> u32 {
    match dialect {
        Dialect::Sqlite => 1,
        Dialect::Postgres => 4,
    }
}

impl Batcher {
    /// Starts the writers (see `writers`); on SQLite, they store through `sqlite` when it is
    /// given.
    pub(super) fn start(
        pool: &AnyPool,
        dialect: Dialect,
        sqlite: Option<Arc<SqliteWriter>>,
        health: Arc<Health>,
    ) -> Batcher {
        let writers = (0..writers(dialect))
            .map(|_| {
                let (posts, inbox) = mpsc::channel(QUEUE);
                let (committed, outbox) = mpsc::channel(PUBLISH_QUEUE);
                let writer = Writer {
                    pool: pool.clone(),
                    dialect,
                    conn: None,
                    sqlite: sqlite.clone(),
                };
                tokio::spawn(write_loop(writer, inbox, committed));
                tokio::spawn(publish_loop(outbox, health.clone()));
                posts
            })
            .collect();
        Batcher {
            writers,
            waiting: Arc::default(),
        }
    }

    /// Posts queued or in a batch not yet committed, on this node.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Queues a post with the writer that owns its room; the outcome comes once its batch
    /// has committed. Posts queued one after another to a room are stored (and their
    /// after-commit steps run) in that order.
    pub(super) async fn queue(
        &self,
        draft: Draft<'_>,
        then: Option<AfterCommit>,
    ) -> StoreResult<Queued> {
        let (reply, answer) = oneshot::channel();
        let post = Post {
            room_id: draft.room_id.to_owned(),
            author: draft.author.clone(),
            body: draft.body.to_owned(),
            client_id: draft.client_id.map(str::to_owned),
            replying_to: draft.replying_to.cloned().map(Box::new),
            mentions: draft.mentions.to_vec(),
            then,
            reply,
            _counted: Counted::new(&self.waiting),
        };
        let mut hasher = DefaultHasher::new();
        draft.room_id.hash(&mut hasher);
        let writer = &self.writers[hasher.finish() as usize % self.writers.len()];
        writer.send(post).await.map_err(|_| closed())?;
        Ok(Queued(answer))
    }
}

fn closed() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

/// A queued post: a future of its outcome, ready once its batch has committed (or failed).
/// Dropping it does not withdraw the post.
#[derive(Debug)]
pub struct Queued(oneshot::Receiver<StoreResult<Posted>>);

impl Future for Queued {
    type Output = StoreResult<Posted>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or_else(|_| Err(closed())))
    }
}

/// Where a writer stores its batches: through the pool on a connection it keeps, or on
/// SQLite's writer of the store's own (`sqlite`).
struct Writer {
    pool: AnyPool,
    dialect: Dialect,
    /// A connection of its own saves a pool round trip (and its liveness ping) per batch.
    conn: Option<PoolConnection<Any>>,
    sqlite: Option<Arc<SqliteWriter>>,
}

impl Writer {
    /// Stores `posts`, and hands them back with what became of each.
    async fn store(&mut self, posts: Vec<Post>) -> (Vec<Post>, Result<Vec<Outcome>, sqlx::Error>) {
        if let Some(sqlite) = &self.sqlite {
            return sqlite.store(posts).await;
        }
        let stored = match &mut self.conn {
            Some(c) => store(c, self.dialect, &posts).await,
            None => match self.pool.acquire().await {
                Ok(c) => store(self.conn.insert(c), self.dialect, &posts).await,
                Err(e) => Err(e),
            },
        };
        if stored.is_err() {
            // The connection may be what failed; the next batch starts on a fresh one.
            self.conn = None;
        }
        (posts, stored)
    }
}

/// Takes what is queued, stores it, hands it on; until every `Store` is gone.
async fn write_loop(
    mut writer: Writer,
    mut inbox: mpsc::Receiver<Post>,
    committed: mpsc::Sender<Committed>,
) {
    let mut pool_closed = writer.pool.close_event();
    let mut posts = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            // Closing the pool waits for every connection to come back, this one included.
            _ = &mut pool_closed, if writer.conn.is_some() => {
                writer.conn = None;
                continue;
            }
            taken = inbox.recv_many(&mut posts, MAX_BATCH) => if taken == 0 { return },
        }
        let (mut posts_back, mut stored) = writer.store(std::mem::take(&mut posts)).await;
        for attempt in 1..ATTEMPTS {
            match &stored {
                // Another writer stored one of these client ids meanwhile (or the two met
                // in the index in opposite orders): this time the batch finds it. Both
                // writers tried again at once would meet again, so each waits a moment
                // of its own first.
                Err(sqlx::Error::Database(e))
                    if e.is_unique_violation()
                        || e.code().is_some_and(|c| c == "40P01" || c == "40001") =>
                {
                    let jitter = rand::random_range(0..RETRY_JITTER_MS * attempt as u64);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                    (posts_back, stored) = writer.store(posts_back).await;
                }
                _ => break,
            }
        }
        let batch = Committed {
            posts: posts_back,
            stored: stored.map_err(Arc::new),
        };
        if committed.send(batch).await.is_err() {
            return;
        }
        posts.reserve(MAX_BATCH);
    }
}

/// Stores `posts` in one transaction through a pooled connection (PostgreSQL's, or that of a
/// SQLite database in memory or named by URI); the result lines up with `posts`.
async fn store(
    conn: &mut AnyConnection,
    dialect: Dialect,
    posts: &[Post],
) -> Result<Vec<Outcome>, sqlx::Error> {
    // PostgreSQL's one statement stores messages alone; a batch that mentions someone
    // stores the mentions with them, in a transaction as on SQLite.
    if dialect == Dialect::Postgres && posts.iter().all(|p| p.mentions.is_empty()) {
        let (repeats, fresh) = sort_repeats(posts, find_repeats(conn, posts).await?);
        let by_room = by_room(posts, &fresh);
        let stored = store_in_one_statement(conn, posts, &by_room).await?;
        return Ok(outcomes(stored, repeats));
    }
    // Read before the transaction: a read first would make it a reader that must become a
    // writer, which SQLite refuses at once (no busy wait) when another connection writes
    // meanwhile. A repeat stored in between meets the unique index, and the batch is tried
    // again.
    let (repeats, fresh) = sort_repeats(posts, find_repeats(conn, posts).await?);
    let by_room = by_room(posts, &fresh);
    if by_room.is_empty() {
        return Ok(outcomes(posts.iter().map(|_| None).collect(), repeats));
    }
    let created_at_ms = now_ms();
    let ids = new_ids(posts);
    let mut tx = conn.begin().await?;
    // One statement for every room in the batch: each statement is a round trip (to the
    // server, or to SQLite's worker thread), and a batch may span hundreds of rooms.
    let sql = bump_sql(by_room.len());
    let mut bump = sqlx::query_as::<_, (String, i64)>(&sql);
    for (room_id, indices) in &by_room {
        bump = bump.bind(*room_id).bind(indices.len() as i64);
    }
    let bumped = bump.fetch_all(&mut *tx).await?;
    let stored = numbered(posts, &by_room, &bumped, ids, created_at_ms);
    let rows: Vec<&StoredMessage> = stored.iter().flatten().collect();
    if !rows.is_empty() {
        let sql = insert_sql(rows.len());
        let mut insert = sqlx::query(&sql).bind(created_at_ms);
        for m in &rows {
            insert = insert
                .bind(&m.id)
                .bind(&m.room_id)
                .bind(m.seq)
                .bind(&m.author.id)
                .bind(&m.body)
                .bind(&m.client_id)
                .bind(m.replying_to.as_ref().map(|q| q.id.as_str()))
                .bind(mentions_column(m));
        }
        insert.execute(&mut *tx).await?;
        let mentions = mentions_of(&rows);
        if !mentions.is_empty() {
            let sql = mentions_sql(mentions.len());
            let mut insert = sqlx::query(&sql);
            for (user, room, seq) in mentions {
                insert = insert.bind(user).bind(room).bind(seq);
            }
            insert.execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    Ok(outcomes(stored, repeats))
}

/// The people a new message mentions, as its `mentions` column keeps them.
fn mentions_column(m: &StoredMessage) -> Option<String> {
    to_json_column(&m.mentions.iter().map(Person::of).collect::<Vec<_>>())
}

/// The (user, room, seq) of each mention in `rows`.
fn mentions_of<'a>(rows: &[&'a StoredMessage]) -> Vec<(&'a str, &'a str, i64)> {
    rows.iter()
        .flat_map(|m| {
            m.mentions
                .iter()
                .map(|u| (u.id.as_str(), m.room_id.as_str(), m.seq))
        })
        .collect()
}

/// Where a post stands before storing: new, a repeat of a message stored before, or a
/// repeat of an earlier post in the same batch (by index).
enum Repeat {
    No,
    Of(Box<StoredMessage>),
    OfPost(usize),
}

/// The messages the batch's authors already stored under the client ids its posts carry,
/// by (author, client id).
async fn find_repeats(
    conn: &mut AnyConnection,
    posts: &[Post],
) -> Result<HashMap<(String, String), StoredMessage>, sqlx::Error> {
    let keyed = keyed(posts);
    if keyed.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = repeats_sql(keyed.len());
    let mut query = sqlx::query(&sql);
    for (author, client_id) in &keyed {
        query = query.bind(*author).bind(*client_id);
    }
    let rows = query.fetch_all(conn).await?;
    let found = rows
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(by_key(found))
}

/// The (author, client id) of each post that carries a client id.
fn keyed(posts: &[Post]) -> Vec<(&str, &str)> {
    posts
        .iter()
        .filter_map(|p| Some((p.author.id.as_str(), p.client_id.as_deref()?)))
        .collect()
}

/// Messages found by `repeats_sql`, by (author, client id).
fn by_key(found: Vec<StoredMessage>) -> HashMap<(String, String), StoredMessage> {
    found
        .into_iter()
        .filter_map(|m| Some(((m.author.id.clone(), m.client_id.clone()?), m)))
        .collect()
}

/// Each post's `Repeat`, and the indices of the posts to store.
fn sort_repeats(
    posts: &[Post],
    mut stored_before: HashMap<(String, String), StoredMessage>,
) -> (Vec<Repeat>, Vec<usize>) {
    let mut first_in_batch: HashMap<(&str, &str), usize> = HashMap::new();
    let mut repeats = Vec::with_capacity(posts.len());
    let mut fresh = Vec::with_capacity(posts.len());
    for (i, post) in posts.iter().enumerate() {
        let Some(client_id) = post.client_id.as_deref() else {
            repeats.push(Repeat::No);
            fresh.push(i);
            continue;
        };
        let key = (post.author.id.as_str(), client_id);
        if let Some(message) = stored_before.get(&(key.0.to_owned(), key.1.to_owned())) {
            repeats.push(Repeat::Of(Box::new(message.clone())));
        } else if let Some(&first) = first_in_batch.get(&key) {
            repeats.push(Repeat::OfPost(first));
        } else {
            first_in_batch.insert(key, i);
            repeats.push(Repeat::No);
            fresh.push(i);
        }
    }
    stored_before.clear();
    (repeats, fresh)
}

/// The posts to store, by room: rooms in id order, so that transactions on other nodes
/// take row locks in the same order and cannot deadlock.
fn by_room<'a>(posts: &'a [Post], fresh: &[usize]) -> BTreeMap<&'a str, Vec<usize>> {
    let mut by_room: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for &i in fresh {
        by_room.entry(&posts[i].room_id).or_default().push(i);
    }
    by_room
}

/// Each post's outcome, from what was stored (index for index, `None` where nothing was)
/// and what repeated.
fn outcomes(stored: Vec<Option<StoredMessage>>, repeats: Vec<Repeat>) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = stored
        .into_iter()
        .map(|m| m.map_or(Outcome::NoRoom, Outcome::Stored))
        .collect();
    for (i, repeat) in repeats.into_iter().enumerate() {
        outcomes[i] = match repeat {
            Repeat::No => continue,
            Repeat::Of(message) => Outcome::Repeat(*message),
            Repeat::OfPost(first) => match &outcomes[first] {
                Outcome::Stored(message) | Outcome::Repeat(message) => {
                    Outcome::Repeat(message.clone())
                }
                Outcome::NoRoom => Outcome::NoRoom,
            },
        };
    }
    outcomes
}

/// PostgreSQL: the bump and the insert as one statement (data-modifying CTEs), committed on
/// its own. A transaction of two statements was four round trips (`BEGIN`, bump, insert,
/// `COMMIT`), each a wake-up of a backend, on the path of every message.
async fn store_in_one_statement(
    conn: &mut AnyConnection,
    posts: &[Post],
    by_room: &BTreeMap<&str, Vec<usize>>,
) -> Result<Vec<Option<StoredMessage>>, sqlx::Error> {
    if by_room.is_empty() {
        // Every post repeated one stored before.
        return Ok(posts.iter().map(|_| None).collect());
    }
    let created_at_ms = now_ms();
    let ids = new_ids(posts);
    let rows = by_room.values().map(Vec::len).sum();
    let sql = bump_and_insert_sql(by_room.len(), rows);
    let mut query = sqlx::query_as::<_, (String, i64)>(&sql).bind(created_at_ms);
    for (room_id, indices) in by_room {
        query = query.bind(*room_id).bind(indices.len() as i64);
    }
    for indices in by_room.values() {
        // `k`, the post's place among its room's posts, turns the room's new `last_seq`
        // into the post's seq; seqs follow arrival order.
        for (k, &i) in indices.iter().enumerate() {
            let post = &posts[i];
            query = query
                .bind(&ids[i])
                .bind(&post.room_id)
                .bind(k as i64 + 1)
                .bind(&post.author.id)
                .bind(&post.body)
                .bind(&post.client_id)
                .bind(post.replying_to.as_ref().map(|q| q.id.as_str()));
        }
    }
    let bumped = query.fetch_all(conn).await?;
    Ok(numbered(posts, by_room, &bumped, ids, created_at_ms))
}

/// A message id for each post, made before storing so that the statements can carry it.
fn new_ids(posts: &[Post]) -> Vec<String> {
    posts
        .iter()
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect()
}

/// The stored messages, index for index with `posts`, from each bumped room's new
/// `last_seq`: a room's posts take the seqs just below it, in arrival order (the order they
/// were queued). A post to a room that was not bumped (it does not exist) is `None`.
fn numbered(
    posts: &[Post],
    by_room: &BTreeMap<&str, Vec<usize>>,
    bumped: &[(String, i64)],
    mut ids: Vec<String>,
    created_at_ms: i64,
) -> Vec<Option<StoredMessage>> {
    let mut stored: Vec<Option<StoredMessage>> = posts.iter().map(|_| None).collect();
    for (room_id, last) in bumped {
        let Some(indices) = by_room.get(room_id.as_str()) else {
            continue;
        };
        let n = indices.len() as i64;
        for (k, &i) in indices.iter().enumerate() {
            let post = &posts[i];
            stored[i] = Some(StoredMessage {
                id: std::mem::take(&mut ids[i]),
                room_id: post.room_id.clone(),
                seq: last - n + 1 + k as i64,
                author: post.author.clone(),
                body: post.body.clone(),
                created_at_ms,
                client_id: post.client_id.clone(),
                rev: last - n + 1 + k as i64,
                edited_at_ms: None,
                deleted: false,
                reactions: Vec::new(),
                replying_to: post.replying_to.clone(),
                mentions: post.mentions.clone(),
            });
        }
    }
    stored
}

/// Runs each committed message's after-commit step in seq order, then answers its poster.
async fn publish_loop(mut committed: mpsc::Receiver<Committed>, health: Arc<Health>) {
    while let Some(Committed { posts, stored }) = committed.recv().await {
        let stored = match stored {
            Ok(stored) => stored,
            Err(e) => {
                health.note(&e);
                tracing::error!(error = %e, posts = posts.len(), "message batch not stored");
                for post in posts {
                    let _ = post.reply.send(Err(StoreError::Batch(e.clone())));
                }
                continue;
            }
        };
        let mut steps = Vec::new();
        let mut answers = Vec::with_capacity(posts.len());
        for (post, outcome) in posts.into_iter().zip(stored) {
            let answer = match outcome {
                Outcome::Stored(message) => {
                    if let Some(then) = post.then {
                        steps.push(then(&message));
                    }
                    Ok(Posted {
                        message,
                        repeat: false,
                    })
                }
                Outcome::Repeat(message) => Ok(Posted {
                    message,
                    repeat: true,
                }),
                Outcome::NoRoom => Err(StoreError::Database(sqlx::Error::RowNotFound)),
            };
            answers.push((post.reply, answer));
        }
        // Each step is polled once here, in seq order: what it does at once (the delivery to
        // this node's sockets) happens in order. What it waits for (a PUBLISH to Redis)
        // finishes in a task of its own, so a slow round trip holds up only this batch's
        // answers, not the next batch's deliveries.
        let mut waiting = Vec::new();
        for mut step in steps {
            if futures_util::poll!(&mut step).is_pending() {
                waiting.push(step);
            }
        }
        let answer_all = move || {
            for (reply, answer) in answers {
                let _ = reply.send(answer);
            }
        };
        if waiting.is_empty() {
            answer_all();
        } else {
            tokio::spawn(async move {
                futures_util::future::join_all(waiting).await;
                answer_all();
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use std::hash::{DefaultHasher, Hash, Hasher};

    use crate::store::{AfterCommit, Draft, Store, StoreError};

    /// Posts racing into two rooms (and one into a room that does not exist) end as
    /// consecutive seqs per room, each published once, in seq order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_posts_get_consecutive_seqs_published_in_order() {
        let file = crate::store::test_db::TempDb::new();
        racing_posts(file.url()).await;
    }

    /// The same on PostgreSQL, where a batch is one statement.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_posts_get_consecutive_seqs_published_in_order_on_postgres() {
        let database = FreshPostgres::create().await;
        racing_posts(&database.url).await;
        database.drop().await;
    }

    /// Two writers storing the same author's client ids in opposite orders meet in the
    /// unique index (a deadlock, or a duplicate key): each batch is tried again, and every
    /// post is answered, each id stored once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_racing_on_client_ids_store_each_once_on_postgres() {
        let database = FreshPostgres::create().await;
        let store = Store::connect(&database.url).await.expect("a fresh store");
        let author = store
            .create_user(
                &crate::chat::names::Username::parse("racer").unwrap(),
                None,
                None,
            )
            .await
            .unwrap();
        // Two rooms that different writers store.
        let writer_of = |room: &str| {
            let mut hasher = DefaultHasher::new();
            room.hash(&mut hasher);
            hasher.finish() as usize % 4
        };
        let rooms: Vec<&str> = (1..=4)
            .map(|i| match i {
                1 => "00000000-0000-7000-8000-000000000001",
                2 => "00000000-0000-7000-8000-000000000002",
                3 => "00000000-0000-7000-8000-000000000003",
                _ => "00000000-0000-7000-8000-000000000004",
            })
            .collect();
        let (a, b) = rooms
            .iter()
            .flat_map(|a| rooms.iter().map(move |b| (*a, *b)))
            .find(|(a, b)| writer_of(a) != writer_of(b))
            .expect("two rooms on two writers");
        for round in 0..20 {
            let ids: Vec<String> = (0..10)
                .map(|i| format!("{round:08}-0000-7000-8000-{i:012}"))
                .collect();
            let mut posts = Vec::new();
            for (room, order) in [(a, false), (b, true)] {
                let mut ids = ids.clone();
                if order {
                    ids.reverse();
                }
                for id in ids {
                    let (store, author) = (store.clone(), author.clone());
                    posts.push(tokio::spawn(async move {
                        let draft = Draft {
                            room_id: room,
                            author: &author,
                            body: "raced",
                            client_id: Some(&id),
                            replying_to: None,
                            mentions: &[],
                        };
                        store
                            .queue_message_then(draft, Box::new(|_| Box::pin(async {})))
                            .await?
                            .await
                    }));
                }
            }
            for post in posts {
                post.await.unwrap().expect("every post answered");
            }
        }
        let (stored,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(stored, 200);
        store.close().await;
        database.drop().await;
    }

    /// A PostgreSQL database of a test's own, dropped at its end.
    struct FreshPostgres {
        admin: sqlx::PgConnection,
        name: String,
        url: String,
    }

    impl FreshPostgres {
        async fn create() -> FreshPostgres {
            use sqlx::{Connection, Executor};
            let name = format!("wirechat_batch_{}", uuid::Uuid::new_v4().simple());
            let mut admin =
                sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
                    .await
                    .expect("PostgreSQL at 127.0.0.1:5432 (.ci/run starts it)");
            admin
                .execute(format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("a fresh database");
            let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
            FreshPostgres { admin, name, url }
        }

        async fn drop(mut self) {
            use sqlx::Executor;
            let _ = self
                .admin
                .execute(format!("DROP DATABASE {}", self.name).as_str())
                .await;
        }
    }

    async fn racing_posts(url: &str) {
        let store = Store::connect(url).await.expect("a fresh store");
        let author = store
            .create_user(
                &crate::chat::names::Username::parse("batcher").unwrap(),
                None,
                None,
            )
            .await
            .unwrap();
        let rooms = [
            "00000000-0000-7000-8000-000000000001",
            "00000000-0000-7000-8000-000000000002",
        ];
        let published: Arc<Mutex<HashMap<String, Vec<i64>>>> = Arc::default();
        let mut posts = Vec::new();
        for i in 0..400 {
            let (store, author, published) = (store.clone(), author.clone(), published.clone());
            let room = rooms[i % 2];
            posts.push(tokio::spawn(async move {
                let then: AfterCommit = Box::new(move |m| {
                    let mut published = published.lock().unwrap();
                    published.entry(m.room_id.clone()).or_default().push(m.seq);
                    Box::pin(async {})
                });
                // Posts 20k and 20k + 2 (both to the first room) carry one client id, as a
                // retry does: stored once.
                let client_id = format!("{:08}-0000-7000-8000-000000000000", i / 20);
                let draft = Draft {
                    room_id: room,
                    author: &author,
                    body: &format!("m{i}"),
                    client_id: matches!(i % 20, 0 | 2).then_some(client_id.as_str()),
                    replying_to: None,
                    mentions: &[],
                };
                let queued = store.queue_message_then(draft, then).await?;
                queued.await.map(|posted| (i, posted))
            }));
        }
        let missing = store.post_message("no-such-room", &author, "lost").await;
        assert!(
            matches!(missing, Err(StoreError::Database(_))),
            "{missing:?}"
        );
        let mut by_client_id: HashMap<String, Vec<crate::store::Posted>> = HashMap::new();
        for post in posts {
            let (i, posted) = post.await.unwrap().expect("stored");
            if matches!(i % 20, 0 | 2) {
                let key = posted.message.client_id.clone().expect("its client id");
                by_client_id.entry(key).or_default().push(posted);
            }
        }
        assert_eq!(by_client_id.len(), 20);
        for pair in by_client_id.values() {
            assert_eq!(pair.len(), 2);
            assert_eq!(pair[0].message.id, pair[1].message.id, "one message");
            assert_eq!(pair.iter().filter(|p| p.repeat).count(), 1);
        }
        let published = published.lock().unwrap().clone();
        for (room, count) in rooms.into_iter().zip([180, 200]) {
            assert_eq!(published[room], (1..=count).collect::<Vec<i64>>());
            let stored = store.latest_page(room, 500).await.unwrap().messages;
            assert_eq!(stored.len(), count as usize);
        }
        store.close().await;
    }
}
