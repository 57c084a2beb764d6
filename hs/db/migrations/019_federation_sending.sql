-- Outbound federation (hs/federation/sender.py). One row per server we send to: Synapse's
-- `destinations` columns (the admin API shows them), plus the lease that makes one federation sender at
-- a time its owner.
CREATE TABLE federation_destinations (
    destination TEXT PRIMARY KEY,
    -- The server has every event we owe it up to this events stream position (NULL: nothing sent yet).
    last_successful_stream_ordering BIGINT,
    -- Backoff: when the last failed attempt was, and how long to wait after it (ms; 0: not backing off).
    retry_last_ts BIGINT NOT NULL DEFAULT 0,
    retry_interval BIGINT NOT NULL DEFAULT 0,
    -- When the current run of failures began (NULL while the server is reachable).
    failure_ts BIGINT,
    -- The federation sender sending to it, and until when its lease holds (ms since the epoch).
    lease_owner TEXT,
    lease_expires_ts BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX federation_destinations_owner ON federation_destinations (lease_owner);

-- EDUs that must not be lost (to-device messages, device list and signing key updates, receipts),
-- kept until the destination has acknowledged the transaction that carried them.
CREATE TABLE federation_edu_outbox (
    id {SERIAL_PK},
    destination TEXT NOT NULL,
    edu_type TEXT NOT NULL,
    content TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX federation_edu_outbox_destination ON federation_edu_outbox (destination, id);

-- Events of other servers' users that this server relays to the rest of the room (a join, leave or
-- knock it took through send_join/send_leave/send_knock): sent to everyone but `origin`.
CREATE TABLE federation_event_relays (
    event_id TEXT PRIMARY KEY,
    origin TEXT NOT NULL
);

-- How far each federation sender has read the events stream (everything at or below it is queued or
-- recorded as owed through federation_destinations).
CREATE TABLE federation_sender_positions (
    instance_name TEXT PRIMARY KEY,
    stream_ordering BIGINT NOT NULL
);
