//! Searching message text, on a trigram index in each database (FTS5's `trigram` tokenizer
//! on SQLite, `pg_trgm` on PostgreSQL), so that a query matches inside words and in
//! languages written without spaces. A person finds the messages of the rooms they are in
//! (but conversations closed by a block) and of public groups, newest first, a page at a
//! time.
//!
//! What one search costs is bounded whatever the history and the query, and so is what
//! all of a node's searches take from the database:
//! - at most `AT_ONCE` searches run on a node; one more is refused, not queued;
//! - a search looks through a window of the newest `WINDOW` to `2 * WINDOW` messages (by
//!   SQLite's rowid, or PostgreSQL's `place`, both numbering messages as they are stored);
//! - on SQLite, the index is asked for the query's distinct trigrams (an `AND` of terms,
//!   never a phrase, whose cost grows with repeats) for at most `CANDIDATES` rows the
//!   searcher may read; the text is then matched here;
//! - on PostgreSQL, the index is asked one slice of `SLICE` places at a time, newest
//!   first, until a page is full; a statement runs at most `TIMEOUT_MS`.
//!
//! Where the next page starts (`Results::next`) is a readable message's place or a window's
//! edge, never a place taken from a message the searcher may not read: paging tells
//! nothing of other people's conversations.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::messages::message_from_row;
use super::{Dialect, Store, StoreResult};
use crate::chat::names::find_ignoring_case;
use crate::model::{Found, Room, RoomKind};

/// Messages a page of results holds.
pub const PAGE: usize = 20;

/// Searches a node runs at once.
pub(super) const AT_ONCE: usize = 2;

/// Messages (by rowid or place) one search looks through, newest first.
const WINDOW: i64 = 50_000;

/// PostgreSQL: places whose part of the index one step of a search reads. The index is
/// on `place / 10000` (migration 0011), and a query uses it only with the same expression.
const SLICE: i64 = 10_000;

// A window's floor is then where a slice starts.
const _: () = assert!(WINDOW % SLICE == 0);

/// SQLite: rows holding every trigram of the query that one search matches against it.
const CANDIDATES: usize = 200;

/// SQLite: trigrams of the query the index is asked for (more only narrow what the text
/// match then checks anyway).
const TERMS: usize = 12;

/// PostgreSQL: how long one search may run before it is given up as too broad.
const TIMEOUT_MS: i64 = 500;

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
    /// The node runs as many searches as it takes at once.
    Busy,
}

/// A found message's columns: the message's, its room, the other person of a direct
/// conversation (`$2` is the searcher), and where a next page would start (`cursor`).
const SQLITE_SELECT: &str = select_messages!(
    ", (SELECT r.kind FROM rooms r WHERE r.id = m.room_id) AS room_kind, \
     (SELECT r.name FROM rooms r WHERE r.id = m.room_id) AS room_name, \
     (SELECT pu.username FROM memberships pm JOIN users pu ON pu.id = pm.user_id \
      WHERE pm.room_id = m.room_id AND pm.user_id <> $2 LIMIT 1) AS peer, \
     CAST(m.rowid AS TEXT) AS cursor"
);
const POSTGRES_SELECT: &str = select_messages!(
    ", (SELECT r.kind FROM rooms r WHERE r.id = m.room_id) AS room_kind, \
     (SELECT r.name FROM rooms r WHERE r.id = m.room_id) AS room_name, \
     (SELECT pu.username FROM memberships pm JOIN users pu ON pu.id = pm.user_id \
      WHERE pm.room_id = m.room_id AND pm.user_id <> $2 LIMIT 1) AS peer, \
     CAST(m.place AS TEXT) AS cursor"
);

/// Rows the searcher (`$2`) may read: not deleted, in a public group, or in a room of
/// theirs that no block between its two people closed. The room is looked up per row, not
/// joined: joined, PostgreSQL scanned the text index once per group.
const READABLE: &str = "WHERE m.deleted_at IS NULL \
     AND ((SELECT r.kind FROM rooms r WHERE r.id = m.room_id) = 'group' OR (EXISTS \
     (SELECT 1 FROM memberships mb WHERE mb.room_id = m.room_id AND mb.user_id = $2) \
     AND NOT EXISTS (SELECT 1 FROM memberships pm JOIN blocks b \
       ON (b.blocker_id = pm.user_id AND b.blocked_id = $2) \
       OR (b.blocked_id = pm.user_id AND b.blocker_id = $2) \
     WHERE pm.room_id = m.room_id AND pm.user_id <> $2)))";

/// Where a window that ends below rowid (or place) `top` starts: a multiple of `WINDOW`,
/// one to two windows down. Aligned, a window's edge (which a page may offer as where the
/// next one starts) tells of the history only its size to within `WINDOW` messages, not
/// how many messages other people have written since.
fn window_floor(top: i64) -> i64 {
    ((top - 1) / WINDOW - 1).max(0) * WINDOW
}

/// The FTS5 query for `query`: its distinct trigrams (lowered, as the index folds case),
/// each a quoted term, all required.
fn trigram_terms(query: &str) -> String {
    let chars: Vec<char> = query.to_lowercase().chars().collect();
    let mut terms: Vec<String> = Vec::new();
    for window in chars.windows(3) {
        let term: String = window.iter().collect();
        if !terms.contains(&term) {
            terms.push(term);
            if terms.len() == TERMS {
                break;
            }
        }
    }
    terms
        .iter()
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" AND ")
}

impl Store {
    /// Messages whose text contains `query` (at least three characters, compared without
    /// regard to case), newest first, before `before` (a `Results::next`).
    pub async fn search(
        &self,
        user_id: &str,
        query: &str,
        before: Option<&str>,
    ) -> StoreResult<Searched> {
        let Ok(_running) = self.searches.try_acquire() else {
            return Ok(Searched::Busy);
        };
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
        // The window: the messages before `before` (the newest, at first) down to a floor.
        let top = match parse_before(before) {
            Some(Start::Below(top)) => top,
            // Only PostgreSQL's cursors were message ids.
            Some(Start::BelowMessage(_)) | None => return Ok(Searched::BadCursor),
            Some(Start::Newest) => {
                let (newest,): (Option<i64>,) = sqlx::query_as("SELECT MAX(rowid) FROM messages")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| self.failed(e))?;
                newest.unwrap_or(0) + 1
            }
        };
        let floor = window_floor(top);
        let rows = sqlx::query(&format!(
            "{SQLITE_SELECT} {READABLE} AND m.rowid IN (SELECT rowid FROM messages_search \
             WHERE messages_search MATCH $1 AND rowid < $3 AND rowid >= $4) \
             ORDER BY m.rowid DESC LIMIT $5"
        ))
        .bind(trigram_terms(query))
        .bind(user_id)
        .bind(top)
        .bind(floor)
        .bind(CANDIDATES as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        // The index found every trigram; the text must hold them in a row.
        let mut found: Vec<(Found, String)> = Vec::new();
        let mut more = false;
        for row in &rows {
            let (one, cursor) = found_from_row(row).map_err(|e| self.failed(e))?;
            if find_ignoring_case(&one.message.body, query).is_some() {
                if found.len() == PAGE {
                    more = true;
                    break;
                }
                found.push((one, cursor));
            }
        }
        let next = if more {
            // The next page starts after the last shown.
            found.last().map(|(_, cursor)| cursor.clone())
        } else if rows.len() == CANDIDATES {
            // Every candidate was matched: the next page starts below the last of them.
            rows.last()
                .map(|row| row.try_get::<String, _>("cursor"))
                .transpose()
                .map_err(|e| self.failed(e))?
        } else if floor > 0 {
            // The window is done: the next page looks through the one below it.
            Some(floor.to_string())
        } else {
            None
        };
        Ok(Searched::Page(Results {
            found: found.into_iter().map(|(f, _)| f).collect(),
            next,
        }))
    }

    async fn search_postgres(
        &self,
        user_id: &str,
        query: &str,
        before: Option<&str>,
    ) -> StoreResult<Searched> {
        let Some(start) = parse_before(before) else {
            return Ok(Searched::BadCursor);
        };
        let pattern = format!(
            "%{}%",
            query
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let mut tx = self.pool.begin().await.map_err(|e| self.failed(e))?;
        // JIT compiling takes longer than these small scans run (some 40 ms, where the
        // scans take a few), and the plan's cost estimate passes its threshold.
        sqlx::query(&format!(
            "SELECT set_config('statement_timeout', '{TIMEOUT_MS}', true), \
             set_config('jit', 'off', true)"
        ))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.failed(e))?;
        // The window, as on SQLite. The first page's top is the last place handed out,
        // which rolled-back writes may have taken past the newest message: only the
        // window's aligned floor is ever shown.
        let top = match start {
            Start::Below(top) => top,
            Start::Newest => {
                let (last,): (i64,) = sqlx::query_as("SELECT last_value FROM messages_place_seq")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| self.failed(e))?;
                last.saturating_add(1)
            }
            // A page shown before an upgrade offers More below its last message, which
            // the version before named by its id: the next page starts below the newest
            // message stored before that id, as it did then. That message may be one the
            // searcher cannot read, but only its window's aligned floor can be shown.
            Start::BelowMessage(id) => {
                let below: Option<(i64,)> = sqlx::query_as(
                    "SELECT place FROM messages WHERE id < $1 ORDER BY id DESC LIMIT 1",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.failed(e))?;
                below.map_or(1, |(place,)| place + 1)
            }
        };
        let floor = window_floor(top);
        // Slice by slice, newest first: the nested loop over the slices yields each one's
        // rows before it reads the next, so the outer LIMIT stops reading once a page is
        // full. The slices are what bounds a statement: a scan of one reads only that
        // slice's part of each trigram's posting list, and rechecks only its rows.
        let sql = format!(
            "{POSTGRES_SELECT} WHERE m.id IN (SELECT hit.id \
             FROM generate_series($3, $4, -1) AS s(slice) CROSS JOIN LATERAL \
             (SELECT m.id FROM messages m {READABLE} AND (m.place / {SLICE}) = s.slice \
              AND m.place < $5 AND m.body ILIKE $1 \
              ORDER BY m.place DESC LIMIT $6) hit LIMIT $6) \
             ORDER BY m.place DESC"
        );
        let search = sqlx::query(&sql)
            .bind(pattern)
            .bind(user_id)
            .bind((top - 1) / SLICE)
            .bind(floor / SLICE)
            .bind(top)
            .bind(PAGE as i64 + 1);
        let rows = match search.fetch_all(&mut *tx).await {
            Ok(rows) => rows,
            // query_canceled: the statement timeout.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("57014") => {
                return Ok(Searched::TooBroad);
            }
            Err(e) => return Err(self.failed(e)),
        };
        tx.commit().await.map_err(|e| self.failed(e))?;
        let mut found = Vec::with_capacity(rows.len().min(PAGE));
        let mut last = None;
        for row in rows.iter().take(PAGE) {
            let (one, cursor) = found_from_row(row).map_err(|e| self.failed(e))?;
            found.push(one);
            last = Some(cursor);
        }
        let next = if rows.len() > PAGE {
            // The next page starts after the last shown.
            last
        } else if floor > 0 {
            // The window is done: the next page looks through the one below it.
            Some(floor.to_string())
        } else {
            None
        };
        Ok(Searched::Page(Results { found, next }))
    }
}

/// Where a page of results starts.
#[derive(Debug, PartialEq, Eq)]
enum Start<'a> {
    /// The first page: at the newest message.
    Newest,
    /// Below a rowid or place (`Results::next` as this module writes it).
    Below(i64),
    /// Below a message id, as the version before wrote `Results::next` on PostgreSQL.
    BelowMessage(&'a str),
}

/// Where `before` starts a page, if it is a place a search left off: a positive number in
/// digits, or a message id, lowercase and hyphenated.
fn parse_before(before: Option<&str>) -> Option<Start<'_>> {
    match before {
        None => Some(Start::Newest),
        Some(b) if !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()) => b
            .parse::<i64>()
            .ok()
            .filter(|&place| place > 0)
            .map(Start::Below),
        Some(b) if uuid::Uuid::parse_str(b).is_ok_and(|u| u.to_string() == b) => {
            Some(Start::BelowMessage(b))
        }
        Some(_) => None,
    }
}

/// A found message and where a page after it would start.
fn found_from_row(row: &AnyRow) -> Result<(Found, String), sqlx::Error> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_on_multiples_of_their_size() {
        assert_eq!(window_floor(1), 0);
        assert_eq!(window_floor(WINDOW), 0);
        assert_eq!(window_floor(2 * WINDOW), 0);
        assert_eq!(window_floor(2 * WINDOW + 1), WINDOW);
        // Messages written meanwhile do not move it, within a window's size.
        assert_eq!(window_floor(3 * WINDOW - 7), window_floor(2 * WINDOW + 9));
        for top in [1, 77, WINDOW + 1, 5 * WINDOW + 3, i64::MAX] {
            let floor = window_floor(top);
            assert_eq!(floor % WINDOW, 0);
            assert!(
                floor < top && top - floor <= 2 * WINDOW || floor == 0,
                "{top}"
            );
        }
    }

    #[test]
    fn the_slices_are_those_the_postgres_index_is_keyed_by() {
        let migration = include_str!("../../migrations/postgres/0011_search_slices.sql");
        assert!(migration.contains(&format!("((place / {SLICE}), body gin_trgm_ops)")));
    }

    #[test]
    fn a_cursor_is_a_positive_number_or_a_message_id() {
        assert_eq!(parse_before(None), Some(Start::Newest));
        assert_eq!(parse_before(Some("50000")), Some(Start::Below(50_000)));
        let id = "0190a2b4-7c1d-7e3f-8a4b-5c6d7e8f9a0b";
        assert_eq!(parse_before(Some(id)), Some(Start::BelowMessage(id)));
        let upper = id.to_uppercase();
        for bad in ["", "0", "-5", "+5", "5 ", "x", &"9".repeat(100), &upper] {
            assert_eq!(parse_before(Some(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn the_index_is_asked_for_each_trigram_once() {
        assert_eq!(trigram_terms("Abcd"), "\"abc\" AND \"bcd\"");
        assert_eq!(trigram_terms(&"a".repeat(100)), "\"aaa\"");
        assert_eq!(
            trigram_terms("a\"b\"c"),
            "\"a\"\"b\" AND \"\"\"b\"\"\" AND \"b\"\"c\""
        );
        assert_eq!(
            trigram_terms(&"abcdefghijklmnopqrstuvwxyz".repeat(3))
                .matches(" AND ")
                .count(),
            TERMS - 1
        );
    }
}
