-- Users who asked, when deactivating, for their messages to be erased (`erase: true`): their events are
-- then served pruned, as a redaction would leave them, to users who were not joined when they were sent
-- (hs/services/visibility.py). The events themselves are kept: members who saw them still do.
CREATE TABLE erased_users (
    user_id TEXT PRIMARY KEY
);
