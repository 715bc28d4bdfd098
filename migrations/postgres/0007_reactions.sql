-- Who reacted to a message with what. A reaction is a change to the room's history like an
-- edit: toggling one takes the room's next seq and becomes the message's rev.
CREATE TABLE reactions (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    emoji      TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (message_id, emoji, user_id)
);
CREATE INDEX reactions_user ON reactions(user_id);
-- A message's reactions as shown (each emoji, its count, its first few people), kept with
-- the message so that a page of history is read in one query; NULL for none.
ALTER TABLE messages ADD COLUMN reactions TEXT;
