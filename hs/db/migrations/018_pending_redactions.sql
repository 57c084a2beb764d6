-- Redactions received before the event they redact: applied when that event arrives (if allowed then).
CREATE TABLE event_pending_redactions (
    redacts TEXT NOT NULL,
    redaction_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (redacts, redaction_id)
);
