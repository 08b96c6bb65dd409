CREATE TABLE blocks (
    owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    blocked TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (owner, blocked)
);
CREATE INDEX blocks_by_blocked ON blocks(blocked)
