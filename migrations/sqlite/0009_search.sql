-- Search: every message's text in a full-text index of trigrams, so that a query matches
-- inside words and in languages written without spaces. The index keeps no copy of the
-- text (it reads `messages` by rowid); triggers keep it current: an edit replaces the
-- text indexed, and a deletion, which erases the text, takes it out. `secure-delete`
-- removes what a deletion takes out from the index itself, not only from results.
--
-- The index refers to messages by rowid: after a VACUUM (which may renumber rowids of a
-- table keyed by text), run INSERT INTO messages_search(messages_search) VALUES ('rebuild').
CREATE VIRTUAL TABLE messages_search USING fts5(
    body, content = 'messages', content_rowid = 'rowid', tokenize = 'trigram'
);
INSERT INTO messages_search(messages_search, rank) VALUES ('secure-delete', 1);
INSERT INTO messages_search(messages_search) VALUES ('rebuild');

CREATE TRIGGER messages_search_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_search(rowid, body) VALUES (new.rowid, new.body);
END;
CREATE TRIGGER messages_search_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_search(messages_search, rowid, body) VALUES ('delete', old.rowid, old.body);
END;
CREATE TRIGGER messages_search_update AFTER UPDATE OF body ON messages BEGIN
    INSERT INTO messages_search(messages_search, rowid, body) VALUES ('delete', old.rowid, old.body);
    INSERT INTO messages_search(rowid, body) VALUES (new.rowid, new.body);
END;
