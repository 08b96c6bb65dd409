ALTER TABLE users ADD COLUMN account_key TEXT;
ALTER TABLE tokens ADD COLUMN device TEXT;
CREATE TABLE devices (
    username TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen BIGINT,
    PRIMARY KEY (username, fingerprint)
);
CREATE TABLE revoked_devices (
    username TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    revocation TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (username, fingerprint)
)
