-- The people of its room a message mentions (`@name`), as its text shows them:
-- [[user id, username], …]; NULL for none.
ALTER TABLE messages ADD COLUMN mentions TEXT;
-- Each mention of a person, by its room and seq: how many of a room's mentions a person
-- has not read is a count of these after their membership's last read seq.
CREATE TABLE mentions (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    room_id TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, seq)
);
CREATE INDEX mentions_room ON mentions(room_id, seq);
