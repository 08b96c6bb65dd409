CREATE TABLE mailbox_keys (
    username TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    mail_keys TEXT NOT NULL,
    PRIMARY KEY (username, fingerprint)
);
CREATE TABLE deposits (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    device TEXT NOT NULL,
    sender TEXT NOT NULL,
    letter BYTEA NOT NULL,
    size BIGINT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX deposits_by_device ON deposits (device, id);
CREATE INDEX deposits_by_age ON deposits (at)
