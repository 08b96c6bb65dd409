-- Group posts sent at most once: the sender's random id for a post, so that a post sent again (its answer
-- was lost) is recognised and answered with the number it already has. Older posts have none.
ALTER TABLE group_messages ADD COLUMN post_id TEXT;
CREATE UNIQUE INDEX group_messages_post_id ON group_messages (group_id, sender, post_id);
