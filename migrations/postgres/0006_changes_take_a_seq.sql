-- Every change to a room's history takes the room's next seq: a new message, an edit, a
-- deletion. A message's `rev` is the seq of its latest change (its own seq until it is
-- edited or deleted), so "everything after seq S" is the messages whose rev is above S,
-- each in its current state.
ALTER TABLE messages ADD COLUMN rev BIGINT NOT NULL DEFAULT 0;
UPDATE messages SET rev = seq;
CREATE UNIQUE INDEX messages_room_rev ON messages(room_id, rev);
-- When the author last edited it, and when it was deleted (its text is erased then).
ALTER TABLE messages ADD COLUMN edited_at BIGINT;
ALTER TABLE messages ADD COLUMN deleted_at BIGINT;

-- Unread counts count messages, not changes: a room counts the messages posted to it, and
-- a membership how many of them its person had when they last read it.
ALTER TABLE rooms ADD COLUMN posted BIGINT NOT NULL DEFAULT 0;
UPDATE rooms SET posted = last_seq;
ALTER TABLE memberships ADD COLUMN read_posted BIGINT NOT NULL DEFAULT 0;
UPDATE memberships SET read_posted = last_read_seq;
