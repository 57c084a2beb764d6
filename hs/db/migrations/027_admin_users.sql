-- Synapse's admin API for users (hs/services/admin_users.py): a locked user's tokens answer 401
-- M_USER_LOCKED until an admin unlocks it; a shadow-banned user's sends are answered as if they worked
-- but nothing is stored. Both are off for every existing user.
ALTER TABLE users ADD COLUMN locked SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN shadow_banned SMALLINT NOT NULL DEFAULT 0;

-- Access tokens an admin made with POST /_synapse/admin/v1/users/{userId}/login and a `valid_until_ms`:
-- they stop working then. Other tokens have no row (they do not expire).
CREATE TABLE access_token_expiry (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    valid_until_ms BIGINT NOT NULL
);
CREATE INDEX access_token_expiry_user ON access_token_expiry (user_id);
