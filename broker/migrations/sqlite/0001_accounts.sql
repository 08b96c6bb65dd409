CREATE TABLE users (
    username TEXT PRIMARY KEY NOT NULL,
    display_name TEXT NOT NULL,
    search_key TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX tokens_by_user ON tokens(username);
CREATE TABLE friends (
    owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    friend TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    remark TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (owner, friend)
);
CREATE TABLE friend_requests (
    from_user TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    to_user TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    message TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (from_user, to_user)
);
CREATE INDEX friend_requests_to ON friend_requests(to_user);
