"""The media repository's rows: local uploads (with reserved IDs awaiting their upload) and cached
remote media. Files themselves live in hs/media/storage.py, named by their SHA-256."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hs.db.pool import Database
from hs.util import now_ms


@dataclass(frozen=True)
class MediaInfo:
    """What is known about one piece of media, local or remote."""

    server_name: str
    media_id: str
    media_type: str | None
    upload_name: str | None
    media_length: int | None
    sha256: str | None
    created_ts: int
    user_id: str | None = None
    quarantined_by: str | None = None
    safe_from_quarantine: bool = False
    authenticated: bool = False
    unused_expires_ts: int | None = None

    @property
    def uploaded(self) -> bool:
        return self.sha256 is not None


def _local(server_name: str, row: Any) -> MediaInfo:
    return MediaInfo(server_name, row["media_id"], row["media_type"], row["upload_name"], row["media_length"],
                     row["sha256"], row["created_ts"], row["user_id"], row["quarantined_by"],
                     bool(row["safe_from_quarantine"]), bool(row["authenticated"]), row["unused_expires_ts"])


def _remote(row: Any) -> MediaInfo:
    return MediaInfo(row["media_origin"], row["media_id"], row["media_type"], row["upload_name"],
                     row["media_length"], row["sha256"], row["created_ts"], None, row["quarantined_by"],
                     False, bool(row["authenticated"]))


class MediaStore:
    def __init__(self, db: Database, server_name: str) -> None:
        self.db = db
        self.server_name = server_name

    # -- local media ---------------------------------------------------------------------------------
    async def add_local(self, media_id: str, user_id: str, media_type: str, upload_name: str | None,
                        length: int, sha256: str, authenticated: bool) -> None:
        now = now_ms()
        await self.db.execute(
            "INSERT INTO local_media (media_id, user_id, media_type, upload_name, media_length, sha256, created_ts,"
            " uploaded_ts, last_access_ts, authenticated) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7, $8)",
            media_id, user_id, media_type, upload_name, length, sha256, now, int(authenticated))

    async def reserve_local(self, media_id: str, user_id: str, expires_ts: int, authenticated: bool) -> None:
        await self.db.execute(
            "INSERT INTO local_media (media_id, user_id, created_ts, unused_expires_ts, authenticated)"
            " VALUES ($1, $2, $3, $4, $5)", media_id, user_id, now_ms(), expires_ts, int(authenticated))

    async def fill_reserved(self, media_id: str, media_type: str, upload_name: str | None, length: int,
                            sha256: str) -> bool:
        """Record the upload of a reserved ID; False if it was filled meanwhile (or is gone)."""
        now = now_ms()
        rows = await self.db.fetch(
            "UPDATE local_media SET media_type = $2, upload_name = $3, media_length = $4, sha256 = $5,"
            " uploaded_ts = $6, last_access_ts = $6 WHERE media_id = $1 AND sha256 IS NULL RETURNING media_id",
            media_id, media_type, upload_name, length, sha256, now)
        return bool(rows)

    async def get_local(self, media_id: str) -> MediaInfo | None:
        row = await self.db.fetchrow("SELECT * FROM local_media WHERE media_id = $1", media_id)
        return None if row is None else _local(self.server_name, row)

    async def count_pending(self, user_id: str, now: int) -> tuple[int, int | None]:
        """(reserved IDs of the user still waiting for their upload; the soonest such reservation's
        expiry)."""
        row = await self.db.fetchrow(
            "SELECT COUNT(*) AS n, MIN(unused_expires_ts) AS first FROM local_media"
            " WHERE user_id = $1 AND sha256 IS NULL AND unused_expires_ts > $2", user_id, now)
        return (int(row["n"]), row["first"]) if row else (0, None)

    async def uploaded_since(self, user_id: str, since_ts: int) -> int:
        """Bytes the user uploaded since `since_ts` (for `media_upload_limits`)."""
        total = await self.db.fetchval(
            "SELECT COALESCE(SUM(media_length), 0) FROM local_media WHERE user_id = $1 AND uploaded_ts >= $2",
            user_id, since_ts)
        return int(total or 0)

    async def delete_expired_reservations(self, now: int) -> int:
        rows = await self.db.fetch(
            "DELETE FROM local_media WHERE sha256 IS NULL AND unused_expires_ts <= $1 RETURNING media_id", now)
        return len(rows)

    async def touch_local(self, media_id: str) -> None:
        await self.db.execute("UPDATE local_media SET last_access_ts = $2 WHERE media_id = $1", media_id, now_ms())

    # -- remote media --------------------------------------------------------------------------------
    async def get_remote(self, origin: str, media_id: str) -> MediaInfo | None:
        row = await self.db.fetchrow(
            "SELECT * FROM remote_media_cache WHERE media_origin = $1 AND media_id = $2", origin, media_id)
        return None if row is None else _remote(row)

    async def add_remote(self, origin: str, media_id: str, media_type: str | None, upload_name: str | None,
                         length: int, sha256: str, authenticated: bool) -> None:
        now = now_ms()
        await self.db.execute(
            "INSERT INTO remote_media_cache (media_origin, media_id, media_type, upload_name, media_length, sha256,"
            " created_ts, last_access_ts, authenticated) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)"
            " ON CONFLICT (media_origin, media_id) DO NOTHING",
            origin, media_id, media_type, upload_name, length, sha256, now, int(authenticated))

    async def touch_remote(self, origin: str, media_id: str) -> None:
        await self.db.execute("UPDATE remote_media_cache SET last_access_ts = $3"
                              " WHERE media_origin = $1 AND media_id = $2", origin, media_id, now_ms())

    async def inherit_quarantine(self, sha256: str, media_id: str, origin: str | None = None) -> None:
        """Quarantine a new row at once if the same bytes are quarantined under another ID (as Synapse
        does: a quarantined file uploaded again stays blocked). `origin` None: a local row."""
        quarantined_by = await self.db.fetchval(
            "SELECT quarantined_by FROM local_media WHERE sha256 = $1 AND quarantined_by IS NOT NULL UNION ALL"
            " SELECT quarantined_by FROM remote_media_cache WHERE sha256 = $1 AND quarantined_by IS NOT NULL"
            " LIMIT 1", sha256)
        if quarantined_by is None:
            return
        if origin is None:
            await self.db.execute("UPDATE local_media SET quarantined_by = $2 WHERE media_id = $1"
                                  " AND safe_from_quarantine = 0", media_id, quarantined_by)
        else:
            await self.db.execute("UPDATE remote_media_cache SET quarantined_by = $3"
                                  " WHERE media_origin = $1 AND media_id = $2", origin, media_id, quarantined_by)

    # -- files -----------------------------------------------------------------------------------------
    async def sha256_in_use(self, sha256: str) -> bool:
        """Whether any local or remote media row still names these bytes (else the file may go)."""
        row = await self.db.fetchrow(
            "SELECT 1 AS x FROM local_media WHERE sha256 = $1 UNION ALL"
            " SELECT 1 AS x FROM remote_media_cache WHERE sha256 = $1 LIMIT 1", sha256)
        return row is not None
