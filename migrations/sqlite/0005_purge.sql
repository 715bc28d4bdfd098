-- Guests who never posted are purged once they can no longer sign in; finding whether an
-- account posted needs its messages by author.
CREATE INDEX messages_author ON messages(author_id);
CREATE INDEX sessions_expires ON sessions(expires_at);
CREATE INDEX users_guests ON users(created_at) WHERE password_hash IS NULL;
