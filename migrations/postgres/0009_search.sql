-- Search: a trigram index on every message's text, so that a query matches inside words
-- and in languages written without spaces (`ILIKE '%…%'` uses it). An edit or a deletion
-- (which erases the text) updates it with the row.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX messages_body_trgm ON messages USING gin (body gin_trgm_ops);
