CREATE TABLE mailbox_keys (
    username VARCHAR(32) NOT NULL,
    fingerprint VARCHAR(64) NOT NULL,
    mail_keys TEXT NOT NULL,
    PRIMARY KEY (username, fingerprint),
    FOREIGN KEY (username) REFERENCES users(username) ON DELETE CASCADE
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE deposits (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username VARCHAR(32) NOT NULL,
    device VARCHAR(64) NOT NULL,
    sender VARCHAR(32) NOT NULL,
    letter LONGBLOB NOT NULL,
    size BIGINT NOT NULL,
    at BIGINT NOT NULL,
    FOREIGN KEY (username) REFERENCES users(username) ON DELETE CASCADE
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX deposits_by_device ON deposits (device, id);
CREATE INDEX deposits_by_age ON deposits (at)
