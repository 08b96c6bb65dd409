ALTER TABLE users ADD COLUMN account_key VARCHAR(64) NULL;
ALTER TABLE tokens ADD COLUMN device VARCHAR(64) NULL;
CREATE TABLE devices (
    username VARCHAR(32) NOT NULL,
    fingerprint VARCHAR(64) NOT NULL,
    record TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen BIGINT NULL,
    PRIMARY KEY (username, fingerprint),
    FOREIGN KEY (username) REFERENCES users(username) ON DELETE CASCADE
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE revoked_devices (
    username VARCHAR(32) NOT NULL,
    fingerprint VARCHAR(64) NOT NULL,
    revocation TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (username, fingerprint),
    FOREIGN KEY (username) REFERENCES users(username) ON DELETE CASCADE
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
