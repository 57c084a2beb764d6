-- Synapse's admin API (issue 17): registration tokens, blocked rooms, and each user's server notices room.

-- Tokens an admin makes for registration (the m.login.registration_token UIA stage). `pending` counts
-- UIA sessions that passed the stage and have not registered yet; `completed` counts registrations.
CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed INTEGER,
    pending INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    expiry_time BIGINT
);

-- Rooms an admin blocked: local users may not join them (Synapse's blocked_rooms).
CREATE TABLE blocked_rooms (
    room_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL
);

-- The room where a user receives server notices from the system user.
CREATE TABLE server_notices_rooms (
    user_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL
);
