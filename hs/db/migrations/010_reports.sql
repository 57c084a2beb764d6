-- Content reports from users (POST /rooms/{roomId}/report/{eventId}, /rooms/{roomId}/report,
-- /users/{userId}/report), for the server's admins (GET /_synapse/admin/v1/event_reports).
CREATE TABLE content_reports (
    report_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,              -- 'event', 'room' or 'user'
    room_id TEXT,
    event_id TEXT,
    target_user_id TEXT,
    reporter TEXT NOT NULL,
    reason TEXT,
    received_ts BIGINT NOT NULL
);
CREATE INDEX content_reports_received ON content_reports (kind, received_ts);
