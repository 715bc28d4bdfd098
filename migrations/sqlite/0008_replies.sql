-- The message a message replies to, in the same room; its quote is read with it.
ALTER TABLE messages ADD COLUMN reply_to TEXT;
