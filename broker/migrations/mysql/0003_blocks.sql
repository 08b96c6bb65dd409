CREATE TABLE blocks (
    owner VARCHAR(32) NOT NULL,
    blocked VARCHAR(32) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (owner, blocked),
    INDEX blocks_by_blocked (blocked),
    FOREIGN KEY (owner) REFERENCES users(username) ON DELETE CASCADE,
    FOREIGN KEY (blocked) REFERENCES users(username) ON DELETE CASCADE
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
