CREATE TABLE read_marks (
    conversation TEXT PRIMARY KEY NOT NULL,
    up_to INTEGER NOT NULL
);
INSERT INTO read_marks (conversation, up_to) SELECT 'u:' || peer, MAX(local_id) FROM messages GROUP BY peer;
INSERT INTO read_marks (conversation, up_to) SELECT 'g:' || group_id, MAX(seq) FROM group_messages GROUP BY group_id
