-- Who started a room: a person's room cap counts the groups they joined and the
-- conversations they started, never one a stranger opened with them; and how many rooms
-- one person creates an hour is limited.
ALTER TABLE rooms ADD COLUMN created_by TEXT REFERENCES users(id) ON DELETE SET NULL;
CREATE INDEX rooms_created_by ON rooms(created_by, created_at);

-- A hidden conversation leaves the sidebar until a message comes after this seq.
ALTER TABLE memberships ADD COLUMN hidden_through BIGINT;

-- Blocked people cannot open a conversation with the one who blocked them, nor post in it.
CREATE TABLE blocks (
    blocker_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    blocked_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id)
);
