-- Other servers' signing keys, as fetched from the server itself or through a notary: one row per
-- (server, key ID), from the freshest response that listed the key. `valid_until_ts` is that
-- response's; `expired_ts` is set for a key it listed under old_verify_keys (usable for what was
-- signed before then). `key_json` is the whole response, signed by the server, which this server
-- serves unchanged (with its own signature added) when it answers as a notary.
CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    verify_key TEXT NOT NULL,          -- unpadded base64 ed25519 public key
    valid_until_ts BIGINT NOT NULL,
    expired_ts BIGINT,
    fetched_ts BIGINT NOT NULL,
    from_server TEXT NOT NULL,         -- the server itself, or the notary that answered
    key_json TEXT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
