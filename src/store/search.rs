//! Searching message text, on a trigram index in each database (FTS5's `trigram` tokenizer
//! on SQLite, `pg_trgm` on PostgreSQL), so that a query matches inside words and in
//! languages written without spaces. A person finds the messages of the rooms they are in
//! and of public groups, newest first, a page at a time. What one search reads is bounded
//! whatever the history: on SQLite at most `CANDIDATES` index entries, on PostgreSQL at
//! most `TIMEOUT_MS` of work.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::messages::message_from_row;
use super::{Dialect, Store, StoreResult};
use crate::model::{Found, Room, RoomKind};

/// Messages a page of results holds.
pub const PAGE: usize = 20;

/// SQLite: index entries one search reads, newest first. A page may find fewer than `PAGE`
/// messages among them that its person may read; it still offers the next.
const CANDIDATES: usize = 1000;

/// PostgreSQL: how long one search may run before it is given up as too broad.
const TIMEOUT_MS: i64 = 2000;

/// A page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Results {
    pub found: Vec<Found>,
    /// Where the next page starts (the `before` of the next search), if there may be one.
    pub next: Option<String>,
}

/// What a search came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Searched {
    Page(Results),
    /// It would have read too much (PostgreSQL gave up on it).
    TooBroad,
    /// `before` is not a place a search left off.
    BadCursor,
}

/// A found message's columns: the message's, its room, the other person of a direct
/// conversation (`$2` is the searcher), and where a next page would start (`cursor`).
const SQLITE_SELECT: &str = select_messages!(
    ", r.kind AS room_kind, r.name AS room_name, \
     (SELECT pu.username FROM memberships pm JOIN users pu ON pu.id = pm.user_id \
      WHERE pm.room_id = m.room_id AND pm.user_id <> $2 LIMIT 1) AS peer, \
     CAST(m.rowid AS TEXT) AS cursor"
);
const POSTGRES_SELECT: &str = select_messages!(
    ", r.kind AS room_kind, r.name AS room_name, \
     (SELECT pu.username FROM memberships pm JOIN users pu ON pu.id = pm.user_id \
      WHERE pm.room_id = m.room_id AND pm.user_id <> $2 LIMIT 1) AS peer, \
     m.id AS cursor"
);

/// Rows the searcher may read: not deleted, in a public group or a room of theirs (`$2`).
const READABLE: &str = "JOIN rooms r ON r.id = m.room_id \
     WHERE m.deleted_at IS NULL AND (r.kind = 'group' OR EXISTS \
     (SELECT 1 FROM memberships mb WHERE mb.room_id = m.room_id AND mb.user_id = $2))";

impl Store {
    /// Messages whose text contains `query` (at least three characters, compared without
    /// regard to case), newest first, before `before` (a `Results::next`).
    pub async fn search(
        &self,
        user_id: &str,
        query: &str,
        before: Option<&str>,
    ) -> StoreResult<Searched> {
        match self.dialect {
            Dialect::Sqlite => self.search_sqlite(user_id, query, before).await,
            Dialect::Postgres => self.search_postgres(user_id, query, before).await,
        }
    }

    async fn search_sqlite(
        &self,
        user_id: &str,
        query: &str,
        before: Option<&str>,
    ) -> StoreResult<Searched> {
        let before = match before.map(str::parse::<i64>) {
            None => i64::MAX,
            Some(Ok(rowid)) => rowid,
            Some(Err(_)) => return Ok(Searched::BadCursor),
        };
        // A phrase: the trigram tokenizer matches it anywhere in the text.
        let phrase = format!("\"{}\"", query.replace('"', "\"\""));
        let candidates: Vec<(i64,)> = sqlx::query_as(
            "SELECT rowid FROM messages_search WHERE messages_search MATCH $1 AND rowid < $2 \
             ORDER BY rowid DESC LIMIT $3",
        )
        .bind(&phrase)
        .bind(before)
        .bind(CANDIDATES as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        let Some(&(last,)) = candidates.last() else {
            return Ok(Searched::Page(Results {
                found: Vec::new(),
                next: None,
            }));
        };
        let rowids = serde_json::to_string(&candidates.iter().map(|c| c.0).collect::<Vec<_>>())
            .unwrap_or_default();
        let rows = sqlx::query(&format!(
            "{SQLITE_SELECT} {READABLE} AND m.rowid IN (SELECT value FROM json_each($1)) \
             ORDER BY m.rowid DESC LIMIT $3"
        ))
        .bind(rowids)
        .bind(user_id)
        .bind(PAGE as i64 + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        let mut results = self.results(&rows)?;
        if results.next.is_none() && candidates.len() == CANDIDATES {
            results.next = Some(last.to_string());
        }
        Ok(Searched::Page(results))
    }

    async fn search_postgres(
        &self,
        user_id: &str,
        query: &str,
        before: Option<&str>,
    ) -> StoreResult<Searched> {
        if before.is_some_and(|b| uuid::Uuid::parse_str(b).is_err()) {
            return Ok(Searched::BadCursor);
        }
        let pattern = format!(
            "%{}%",
            query
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let sql = format!(
            "{POSTGRES_SELECT} {READABLE} AND m.body ILIKE $1 {} ORDER BY m.id DESC LIMIT $3",
            if before.is_some() {
                "AND m.id < $4"
            } else {
                ""
            }
        );
        let mut tx = self.pool.begin().await.map_err(|e| self.failed(e))?;
        sqlx::query(&format!("SET LOCAL statement_timeout = {TIMEOUT_MS}"))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.failed(e))?;
        let mut search = sqlx::query(&sql)
            .bind(pattern)
            .bind(user_id)
            .bind(PAGE as i64 + 1);
        if let Some(before) = before {
            search = search.bind(before);
        }
        let rows = match search.fetch_all(&mut *tx).await {
            Ok(rows) => rows,
            // query_canceled: the statement timeout.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("57014") => {
                return Ok(Searched::TooBroad);
            }
            Err(e) => return Err(self.failed(e)),
        };
        tx.commit().await.map_err(|e| self.failed(e))?;
        Ok(Searched::Page(self.results(&rows)?))
    }

    /// Up to `PAGE` found messages from `rows` (one more says a next page exists).
    fn results(&self, rows: &[AnyRow]) -> StoreResult<Results> {
        let read = |row: &AnyRow| -> Result<(Found, String), sqlx::Error> {
            let message = message_from_row(row)?;
            let kind = if row.try_get::<String, _>("room_kind")? == RoomKind::Group.as_str() {
                RoomKind::Group
            } else {
                RoomKind::Direct
            };
            let found = Found {
                room: Room {
                    id: message.room_id.clone(),
                    kind,
                    name: row.try_get("room_name")?,
                },
                peer: row.try_get("peer")?,
                message,
            };
            Ok((found, row.try_get("cursor")?))
        };
        let mut found = Vec::with_capacity(rows.len().min(PAGE));
        let mut next = None;
        for row in rows.iter().take(PAGE) {
            let (one, cursor) = read(row).map_err(|e| self.failed(e))?;
            found.push(one);
            next = Some(cursor);
        }
        if rows.len() <= PAGE {
            next = None;
        }
        Ok(Results { found, next })
    }
}
