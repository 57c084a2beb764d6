-- Receipts, push rules and per-event push actions (the source of unread notification counts).

-- The latest receipt per (room, type, user, thread); thread_id '' is an unthreaded receipt. Every
-- update moves the row to a new receipts stream position. event_stream_ordering is the events stream
-- position of the receipt's event, so receipts only move forward and counts can be cut at them.
CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_stream_ordering BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_stream ON receipts (stream_id);
CREATE INDEX receipts_user_room ON receipts (user_id, room_id);

-- A user's own push rules, per kind; a higher priority is more important.
CREATE TABLE push_rules (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    priority BIGINT NOT NULL,
    conditions TEXT,
    pattern TEXT,
    actions TEXT NOT NULL,
    enabled SMALLINT NOT NULL DEFAULT 1,
    PRIMARY KEY (user_id, kind, rule_id)
);

-- A user's changes to server-default rules: enabled and/or actions (NULL = the default's).
CREATE TABLE push_rules_defaults (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    enabled SMALLINT,
    actions TEXT,
    PRIMARY KEY (user_id, kind, rule_id)
);

-- The push_rules stream position of each user's latest change (for m.push_rules in /sync).
CREATE TABLE push_rules_stream (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT NOT NULL
);
CREATE INDEX push_rules_stream_id ON push_rules_stream (stream_id);

-- One row per (user, event) that notified the user; thread_id 'main' for the main timeline.
-- Rows at or before the user's read receipt are deleted (counts also cut at the receipt).
CREATE TABLE event_push_actions (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    highlight SMALLINT NOT NULL,
    PRIMARY KEY (user_id, room_id, stream_ordering)
);
CREATE INDEX event_push_actions_event ON event_push_actions (event_id);
