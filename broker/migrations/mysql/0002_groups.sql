CREATE TABLE chat_groups (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    owner VARCHAR(32) NOT NULL,
    last_seq BIGINT NOT NULL,
    created_at BIGINT NOT NULL
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE group_members (
    group_id BIGINT NOT NULL,
    username VARCHAR(32) NOT NULL,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, username),
    INDEX group_members_by_user (username),
    FOREIGN KEY (group_id) REFERENCES chat_groups(id) ON DELETE CASCADE,
    FOREIGN KEY (username) REFERENCES users(username) ON DELETE CASCADE
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE group_invites (
    group_id BIGINT NOT NULL,
    username VARCHAR(32) NOT NULL,
    inviter VARCHAR(32) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, username),
    FOREIGN KEY (group_id) REFERENCES chat_groups(id) ON DELETE CASCADE,
    FOREIGN KEY (username) REFERENCES users(username) ON DELETE CASCADE
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE group_messages (
    group_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    sender VARCHAR(32) NOT NULL,
    system BIGINT NOT NULL,
    text MEDIUMTEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, seq),
    FOREIGN KEY (group_id) REFERENCES chat_groups(id) ON DELETE CASCADE
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
