CREATE TABLE users (
    username VARCHAR(32) PRIMARY KEY NOT NULL,
    display_name VARCHAR(255) NOT NULL,
    search_key VARCHAR(512) NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    created_at BIGINT NOT NULL
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE tokens (
    token_hash CHAR(64) PRIMARY KEY NOT NULL,
    username VARCHAR(32) NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    INDEX tokens_by_user (username),
    FOREIGN KEY (username) REFERENCES users(username) ON DELETE CASCADE
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE friends (
    owner VARCHAR(32) NOT NULL,
    friend VARCHAR(32) NOT NULL,
    remark VARCHAR(255),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (owner, friend),
    FOREIGN KEY (owner) REFERENCES users(username) ON DELETE CASCADE,
    FOREIGN KEY (friend) REFERENCES users(username) ON DELETE CASCADE
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE friend_requests (
    from_user VARCHAR(32) NOT NULL,
    to_user VARCHAR(32) NOT NULL,
    message VARCHAR(1024) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (from_user, to_user),
    INDEX friend_requests_to (to_user),
    FOREIGN KEY (from_user) REFERENCES users(username) ON DELETE CASCADE,
    FOREIGN KEY (to_user) REFERENCES users(username) ON DELETE CASCADE
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
