-- One row per notifying event, naming the users it notifies, instead of one row per notified user:
-- a message in a room of N local members wrote N rows (and 2N index entries). Unread counts still come
-- from event_push_summary; these rows are read only to recount after a receipt or a redaction.
CREATE TABLE event_notifications (
    room_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    -- JSON arrays of user IDs; highlight_users is a subset of notify_users.
    notify_users TEXT NOT NULL,
    highlight_users TEXT NOT NULL,
    PRIMARY KEY (room_id, stream_ordering)
);

INSERT INTO event_notifications (room_id, stream_ordering, event_id, thread_id, notify_users, highlight_users)
SELECT room_id, stream_ordering, MIN(event_id), MIN(thread_id), {USERS_JSON}, {HIGHLIGHT_USERS_JSON}
FROM event_push_actions GROUP BY room_id, stream_ordering;

DROP TABLE event_push_actions;
