-- A post may carry the id its client gave it: posting it again (a retry after a lost
-- answer, on any node) stores nothing new. Unique per author; the same index finds an
-- account's messages, which the purge of abandoned guests needs.
ALTER TABLE messages ADD COLUMN client_id TEXT;
CREATE UNIQUE INDEX messages_author_client ON messages(author_id, client_id);

-- Guests who never posted are purged once they can no longer sign in.
CREATE INDEX sessions_expires ON sessions(expires_at);
CREATE INDEX users_guests ON users(created_at) WHERE password_hash IS NULL;
