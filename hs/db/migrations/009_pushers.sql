-- HTTP pushers (POST /pushers/set): where to send a user's push notifications. `last_stream_ordering`
-- is the position of the last notification the pusher delivered (or skipped); after a restart the
-- pusher goes on from there.
CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    kind TEXT NOT NULL,
    device_id TEXT,
    app_display_name TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag TEXT,
    lang TEXT NOT NULL,
    data TEXT NOT NULL,
    pushkey_ts BIGINT NOT NULL,
    last_stream_ordering BIGINT NOT NULL,
    PRIMARY KEY (app_id, pushkey, user_id)
);
CREATE INDEX pushers_user ON pushers (user_id);
-- The pushers read new notifications of every room by position.
CREATE INDEX event_notifications_stream ON event_notifications (stream_ordering);
