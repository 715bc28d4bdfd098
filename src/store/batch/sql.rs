//! The text of a batch's statements, built for its number of rooms and rows: numbered
//! placeholders, which both dialects take.

use crate::store::messages::SELECT_MESSAGES;

/// One PostgreSQL statement for a batch: `$1` is the creation time, then (room, count)
/// pairs for `rooms` rooms, then (id, room, k, author, body, client id, reply to) for `rows` posts,
/// `k` counting from 1 within each room. Posts to a room that does not exist match no bumped row and are
/// not inserted; the rooms it returns say which were.
pub(super) fn bump_and_insert_sql(rooms: usize, rows: usize) -> String {
    let mut sql = String::with_capacity(400 + rooms * 12 + rows * 40);
    sql.push_str("WITH v (room, n) AS (VALUES ");
    push_tuples(&mut sql, rooms, 2, 2, "");
    sql.push_str(
        "), bumped AS (UPDATE rooms SET last_seq = rooms.last_seq + v.n, \
         posted = rooms.posted + v.n FROM v \
         WHERE rooms.id = v.room RETURNING rooms.id, rooms.last_seq, v.n), \
         m (id, room, k, author, body, client, reply) AS (VALUES ",
    );
    push_tuples(&mut sql, rows, 7, 2 + 2 * rooms, "");
    sql.push_str(
        "), inserted AS (INSERT INTO messages \
         (id, room_id, seq, rev, author_id, body, client_id, reply_to, created_at) \
         SELECT m.id, m.room, b.last_seq - b.n + m.k, b.last_seq - b.n + m.k, m.author, \
         m.body, m.client, m.reply, $1 \
         FROM m JOIN bumped b ON b.id = m.room) \
         SELECT id, last_seq FROM bumped",
    );
    sql
}

/// Adds each room's count to its `last_seq` and returns the new values, for `rooms` rooms
/// bound as (id, count) pairs. SQLite (3.33 and later) and PostgreSQL both take a CTE with
/// named columns and `UPDATE … FROM`. The pairs come sorted by id, so that concurrent
/// batches from several nodes tend to lock rows in the same order.
pub(super) fn bump_sql(rooms: usize) -> String {
    let mut sql = String::with_capacity(120 + rooms * 12);
    sql.push_str("WITH v (room, n) AS (VALUES ");
    push_tuples(&mut sql, rooms, 2, 1, "");
    sql.push_str(
        ") UPDATE rooms SET last_seq = rooms.last_seq + v.n, posted = rooms.posted + v.n \
         FROM v WHERE rooms.id = v.room RETURNING id, last_seq",
    );
    sql
}

/// `INSERT … VALUES (…), (…)` for `rows` messages: `$1` is the shared creation time, then
/// eight numbered parameters a row (numbered placeholders work on both dialects); a new
/// message's rev is its seq.
pub(super) fn insert_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(100 + rows * 48);
    sql.push_str(
        "INSERT INTO messages (id, room_id, seq, author_id, body, client_id, reply_to, \
         mentions, created_at, rev) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        let first = 2 + row * 8;
        let columns: Vec<String> = (first..first + 8).map(|p| format!("${p}")).collect();
        sql.push_str(&format!("({}, $1, ${})", columns.join(", "), first + 2));
    }
    sql
}

/// `INSERT … VALUES (…), (…)` for `rows` mentions: (user, room, seq) each.
pub(super) fn mentions_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(60 + rows * 16);
    sql.push_str("INSERT INTO mentions (user_id, room_id, seq) VALUES ");
    push_tuples(&mut sql, rows, 3, 1, "");
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

/// The messages stored under `keys` (author, client id) pairs, bound in that order.
pub(super) fn repeats_sql(keys: usize) -> String {
    let mut sql = String::with_capacity(SELECT_MESSAGES.len() + 8 + keys * 44);
    sql.push_str(SELECT_MESSAGES);
    sql.push_str(" WHERE ");
    for k in 0..keys {
        if k > 0 {
            sql.push_str(" OR ");
        }
        sql.push_str(&format!(
            "(m.author_id = ${} AND m.client_id = ${})",
            2 * k + 1,
            2 * k + 2
        ));
    }
    sql
}

/// Appends `count` tuples of `width` numbered placeholders, numbering from `first`, each
/// closed by `tail`: `($2, $3), ($4, $5)`.
fn push_tuples(sql: &mut String, count: usize, width: usize, first: usize, tail: &str) {
    for tuple in 0..count {
        if tuple > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..width {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", first + tuple * width + column));
        }
        sql.push_str(tail);
        sql.push(')');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_bumped_in_one_statement() {
        assert_eq!(
            bump_sql(2),
            "WITH v (room, n) AS (VALUES ($1, $2), ($3, $4)) UPDATE rooms SET last_seq = \
             rooms.last_seq + v.n, posted = rooms.posted + v.n FROM v WHERE rooms.id = v.room \
             RETURNING id, last_seq"
        );
    }

    #[test]
    fn rows_number_their_parameters_after_the_shared_time() {
        assert_eq!(
            insert_sql(2),
            "INSERT INTO messages (id, room_id, seq, author_id, body, client_id, reply_to, \
             mentions, created_at, rev) VALUES ($2, $3, $4, $5, $6, $7, $8, $9, $1, $4), ($10, \
             $11, $12, $13, $14, $15, $16, $17, $1, $12)"
        );
    }

    #[test]
    fn postgres_bumps_and_inserts_in_one_statement() {
        assert_eq!(
            bump_and_insert_sql(2, 2),
            "WITH v (room, n) AS (VALUES ($2, $3), ($4, $5)), bumped AS (UPDATE rooms SET \
             last_seq = rooms.last_seq + v.n, posted = rooms.posted + v.n FROM v WHERE \
             rooms.id = v.room RETURNING rooms.id, rooms.last_seq, v.n), m (id, room, k, author, body, client, reply) AS \
             (VALUES ($6, $7, $8, $9, $10, $11, $12), ($13, $14, $15, $16, $17, $18, $19)), \
             inserted AS (INSERT INTO messages (id, room_id, seq, rev, author_id, body, \
             client_id, reply_to, created_at) SELECT m.id, m.room, b.last_seq - b.n + m.k, \
             b.last_seq - b.n + m.k, m.author, m.body, m.client, m.reply, $1 FROM m JOIN bumped b ON \
             b.id = m.room) \
             SELECT id, last_seq FROM bumped"
        );
    }
}
