-- Usernames are unique by their key too: folded case, confusable letters made one
-- (UTS #39 skeletons), separators dropped, so `aIice` cannot pose as `alice`. The key is
-- computed by the server (it needs Unicode's tables); rows from before this migration get
-- theirs at the next start, or keep none where an older name already holds it.
ALTER TABLE users ADD COLUMN name_key TEXT;
CREATE UNIQUE INDEX users_name_key ON users(name_key);

-- Failed log-ins per account and address: guessing is slowed per address (`failures`
-- since its last success), and capped per account across all addresses (`window_failures`
-- in the hour from `window_started_at`), without a stranger's failures locking the owner out.
CREATE TABLE login_failures (
    user_id           TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    address           TEXT NOT NULL,
    failures          BIGINT NOT NULL,
    last_failure_at   BIGINT NOT NULL,
    window_failures   BIGINT NOT NULL,
    window_started_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, address)
);
CREATE INDEX login_failures_at ON login_failures(last_failure_at);
