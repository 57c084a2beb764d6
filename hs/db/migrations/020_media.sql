-- The media repository (hs/media/). Files are content-addressed: a file's bytes live once in the store
-- under their SHA-256 (`sha256`), however many uploads or remote copies name them; rows here say which
-- media IDs exist and what they are. A file is deleted when no row names its hash any more.

-- Media uploaded to this server. `sha256` and `media_length` are NULL while an ID reserved with
-- POST /_matrix/media/v1/create waits for its upload.
CREATE TABLE local_media (
    media_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    media_type TEXT,
    upload_name TEXT,
    media_length BIGINT,
    sha256 TEXT,
    created_ts BIGINT NOT NULL,
    -- For reserved IDs: when the upload was made (NULL until then) and when the reservation lapses.
    uploaded_ts BIGINT,
    unused_expires_ts BIGINT,
    last_access_ts BIGINT,
    -- Who quarantined it (NULL: not quarantined); protected media cannot be quarantined.
    quarantined_by TEXT,
    safe_from_quarantine INTEGER NOT NULL DEFAULT 0,
    -- 1: uploaded while enable_authenticated_media was on, so never served by the legacy endpoints.
    authenticated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX local_media_user ON local_media (user_id, created_ts);
CREATE INDEX local_media_sha256 ON local_media (sha256);

-- Media of other servers fetched and cached here.
CREATE TABLE remote_media_cache (
    media_origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    media_type TEXT,
    upload_name TEXT,
    media_length BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    last_access_ts BIGINT,
    quarantined_by TEXT,
    authenticated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (media_origin, media_id)
);
CREATE INDEX remote_media_cache_sha256 ON remote_media_cache (sha256);

-- Thumbnails of a file (by the file's hash, so local and remote copies of the same bytes share them).
CREATE TABLE media_thumbnails (
    sha256 TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    media_type TEXT NOT NULL,
    media_length BIGINT NOT NULL,
    PRIMARY KEY (sha256, width, height, method, media_type)
);
