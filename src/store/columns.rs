//! A row's columns by name, whichever driver read it: sqlx's rows, or rusqlite's (the reads
//! made on the calling thread, `inline`, and SQLite's batches, `batch::sqlite`), so that
//! both are turned into the same values by one function.

use sqlx::Row;
use sqlx::any::AnyRow;

pub(super) trait Columns {
    type Error;
    fn text(&self, name: &str) -> Result<String, Self::Error>;
    fn maybe_text(&self, name: &str) -> Result<Option<String>, Self::Error>;
    fn int(&self, name: &str) -> Result<i64, Self::Error>;
    fn maybe_int(&self, name: &str) -> Result<Option<i64>, Self::Error>;
}

impl Columns for AnyRow {
    type Error = sqlx::Error;
    fn text(&self, name: &str) -> Result<String, sqlx::Error> {
        self.try_get(name)
    }
    fn maybe_text(&self, name: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(name)
    }
    fn int(&self, name: &str) -> Result<i64, sqlx::Error> {
        self.try_get(name)
    }
    fn maybe_int(&self, name: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(name)
    }
}

impl Columns for rusqlite::Row<'_> {
    type Error = rusqlite::Error;
    fn text(&self, name: &str) -> rusqlite::Result<String> {
        self.get(name)
    }
    fn maybe_text(&self, name: &str) -> rusqlite::Result<Option<String>> {
        self.get(name)
    }
    fn int(&self, name: &str) -> rusqlite::Result<i64> {
        self.get(name)
    }
    fn maybe_int(&self, name: &str) -> rusqlite::Result<Option<i64>> {
        self.get(name)
    }
}
