-- Search looks through the newest messages first, one slice of 10,000 places at a time,
-- as SQLite does by rowid: `place` numbers every message in the order it was stored,
-- across rooms, and the text index is keyed by its slice as well as by trigrams
-- (`btree_gin`, trusted like `pg_trgm`). A scan then reads only the slice's part of each
-- trigram's posting list, however long the history. The index still answers a search of
-- the text alone, as a node of the version before asks.
CREATE EXTENSION IF NOT EXISTS btree_gin;

ALTER TABLE messages ADD COLUMN place BIGINT;
CREATE SEQUENCE messages_place_seq OWNED BY messages.place;

-- Numbering writes every row anew, which would update every index on it: the text index
-- goes first and is built once, afterwards, as the new one.
DROP INDEX messages_body_trgm;
UPDATE messages m SET place = o.place
  FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS place FROM messages) o
 WHERE o.id = m.id;
SELECT setval('messages_place_seq', (SELECT COALESCE(MAX(place), 0) + 1 FROM messages), false);
ALTER TABLE messages
    ALTER COLUMN place SET DEFAULT nextval('messages_place_seq'),
    ALTER COLUMN place SET NOT NULL;

-- New rows wait in the index's pending list until it is merged, and every scan reads all
-- of that list: a search scans once per slice, so the list is kept small (256 kB, not the
-- default 4 MB; inserting cost no more in a measure of both).
CREATE INDEX messages_search ON messages USING gin ((place / 10000), body gin_trgm_ops)
    WITH (gin_pending_list_limit = 256);
