-- OpenID tokens (POST /user/{userId}/openid/request_token): a user hands one to a third-party service,
-- which checks it with GET /_matrix/federation/v1/openid/userinfo. Stored as the SHA-256 of the token,
-- like access tokens; each is good until `valid_until_ms`.
CREATE TABLE openid_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    valid_until_ms BIGINT NOT NULL
);
CREATE INDEX openid_tokens_valid_until ON openid_tokens (valid_until_ms);
