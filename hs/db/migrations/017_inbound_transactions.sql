-- Transactions other servers sent us, with our answer: a retry of one (after our restart too) gets the
-- same answer and is not processed again (its EDUs, such as to-device messages, not delivered twice).
CREATE TABLE federation_inbound_transactions (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response_json TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federation_inbound_transactions_ts ON federation_inbound_transactions (received_ts);
