-- Accounts. Guests have no password hash and cannot log in again once logged out.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT,
    password_hash TEXT,
    created_at    BIGINT NOT NULL
);

-- Server-side sessions: the cookie carries only the id, so logout and expiry act everywhere.
CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);

-- A room is a public group (unique name) or a direct conversation (unique pair key).
-- last_seq is the position of the newest message, bumped in the same transaction as the insert.
CREATE TABLE rooms (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('group', 'direct')),
    name       TEXT UNIQUE,
    pair_key   TEXT UNIQUE,
    last_seq   BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    CHECK ((kind = 'group' AND name IS NOT NULL AND pair_key IS NULL)
        OR (kind = 'direct' AND name IS NULL AND pair_key IS NOT NULL))
);

CREATE TABLE memberships (
    room_id       TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    last_read_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX memberships_user ON memberships(user_id);

CREATE TABLE messages (
    id         TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    author_id  TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (room_id, seq)
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
