-- Application service transactions (hs/appservice/sender.py): what the homeserver owes each service.
-- One row per service (its registration `id`): how far each stream has been put into transactions, the
-- last transaction the service acknowledged, and its backoff while it is unreachable.
CREATE TABLE appservice_state (
    as_id TEXT PRIMARY KEY,
    -- Everything of these streams up to these positions is in a stored transaction (or was not for it).
    events_position BIGINT NOT NULL,
    receipts_position BIGINT NOT NULL,
    presence_position BIGINT NOT NULL,
    to_device_position BIGINT NOT NULL,
    device_lists_position BIGINT NOT NULL,
    -- The highest transaction ID handed out, and the highest the service acknowledged.
    last_txn_id BIGINT NOT NULL DEFAULT 0,
    last_acked_txn_id BIGINT NOT NULL DEFAULT 0,
    -- Backoff (Synapse's recoverer): consecutive failures, and when the last one was (ms).
    failures INTEGER NOT NULL DEFAULT 0,
    failed_ts BIGINT NOT NULL DEFAULT 0
);

-- Transactions stored before they are sent, kept until the service acknowledges them: a crash or an
-- outage re-sends the same transaction ID with the same content. `event_ids` is a JSON list (the events
-- are read again when sending); `extra` the JSON of ephemeral events, to-device messages and MSC3202
-- device data, as they were when the transaction was made.
CREATE TABLE appservice_txns (
    as_id TEXT NOT NULL,
    txn_id BIGINT NOT NULL,
    event_ids TEXT NOT NULL,
    extra TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (as_id, txn_id)
);
