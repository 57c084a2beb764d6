-- Unread notification counts kept per (user, room, thread), so /sync reads a few rows instead of
-- counting every unread notification: incremented as events are evaluated, recomputed on receipts
-- and redactions.
CREATE TABLE event_push_summary (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    notif_count BIGINT NOT NULL,
    highlight_count BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id)
);

INSERT INTO event_push_summary (user_id, room_id, thread_id, notif_count, highlight_count)
SELECT a.user_id, a.room_id, a.thread_id, COUNT(*), SUM(a.highlight)
FROM event_push_actions a
WHERE a.stream_ordering > COALESCE((SELECT MAX(r.event_stream_ordering) FROM receipts r
    WHERE r.user_id = a.user_id AND r.room_id = a.room_id AND r.receipt_type IN ('m.read', 'm.read.private')
    AND (r.thread_id = '' OR r.thread_id = a.thread_id)), 0)
GROUP BY a.user_id, a.room_id, a.thread_id;
