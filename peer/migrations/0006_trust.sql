CREATE TABLE friend_keys (
    username TEXT PRIMARY KEY NOT NULL,
    account_key TEXT NOT NULL,
    pinned_at INTEGER NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0,
    new_key TEXT,
    changed_at INTEGER
);
CREATE TABLE revoked_keys (
    username TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (username, fingerprint)
)
