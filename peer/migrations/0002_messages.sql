CREATE TABLE messages (
    local_id INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    peer TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    text TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    stored_at INTEGER NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX messages_by_peer ON messages(peer, local_id);
CREATE INDEX messages_pending ON messages(status, peer, local_id);
