CREATE TABLE transfers (
    id TEXT PRIMARY KEY,
    peer TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    hash TEXT NOT NULL,
    state TEXT NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0,
    source TEXT,
    dir TEXT,
    saved_as TEXT,
    error TEXT,
    resumed_from INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX transfers_by_state ON transfers(state, outgoing);
CREATE INDEX transfers_by_source ON transfers(peer, source, hash)
