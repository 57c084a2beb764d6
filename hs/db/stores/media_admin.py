"""SQL of the media admin API and of media retention (hs/media/admin.py, hs/media/background.py):
quarantine and protection flags, a user's media a page at a time, the media that age or size select
for deletion, the media a room's events name, avatars to keep, and removing rows.

Uploads and downloads keep their own rows in MediaStore (hs/db/stores/media.py); this store adds the
admin's reads and bulk writes so that one stays about serving media. Lists of IDs go into `IN (...)`
a chunk at a time, so a room with thousands of files never builds one statement with thousands of
placeholders.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from hs.db.pool import Connection, Database
from hs.db.stores.where import Where

# The orders Synapse's "list media of a user" offers (its MediaSortOrder), each a column of the table.
USER_MEDIA_ORDERS = ("media_id", "upload_name", "created_ts", "last_access_ts", "media_length", "media_type",
                     "quarantined_by", "safe_from_quarantine")
LOCAL_COLUMNS = ("media_id, user_id, media_type, upload_name, media_length, sha256, created_ts, last_access_ts,"
                 " quarantined_by, safe_from_quarantine, authenticated")
REMOTE_COLUMNS = ("media_origin, media_id, media_type, upload_name, media_length, sha256, created_ts,"
                  " last_access_ts, quarantined_by, authenticated")
IN_CHUNK = 200


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _mxc_pattern(server_name: str) -> str:
    """A LIKE ... ESCAPE '\\' prefix pattern for this server's `mxc://` URIs."""
    escaped = server_name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"mxc://{escaped}/%"


class MediaAdminStore:
    def __init__(self, db: Database, server_name: str) -> None:
        self.db = db
        self.server_name = server_name

    # -- single rows -----------------------------------------------------------------------------------
    async def local_row(self, media_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow(f"SELECT {LOCAL_COLUMNS} FROM local_media WHERE media_id = $1", media_id)
        return None if row is None else dict(row)

    async def remote_row(self, origin: str, media_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow(f"SELECT {REMOTE_COLUMNS} FROM remote_media_cache"
                                     " WHERE media_origin = $1 AND media_id = $2", origin, media_id)
        return None if row is None else dict(row)

    # -- quarantine and protection ---------------------------------------------------------------------
    async def set_quarantine(self, local_ids: Sequence[str], remote: Sequence[tuple[str, str]],
                             quarantined_by: str | None) -> int:
        """Quarantine (or, with `quarantined_by` None, release) the named media and every other copy of
        the same bytes, local or remote, as Synapse does since it tracks hashes; how many rows changed.

        Protected local media (`safe_from_quarantine`) is neither selected nor changed by a
        quarantine, only by a release. Rows already in the wanted state do not count.
        """
        async def txn(c: Connection) -> int:
            hashes: set[str] = set()
            bare_ids: set[str] = set()  # reserved IDs, no bytes yet: flagged by ID
            skip_safe = " AND safe_from_quarantine = 0" if quarantined_by is not None else ""
            for chunk in _chunks(list(local_ids)):
                where = Where()
                rows = await c.fetch(f"SELECT media_id, sha256 FROM local_media WHERE media_id IN"
                                     f" ({where.marks(chunk)}){skip_safe}", *where.args)
                for r in rows:
                    if r["sha256"]:
                        hashes.add(r["sha256"])
                    else:
                        bare_ids.add(r["media_id"])
            for origin, media_id in remote:
                sha = await c.fetchval("SELECT sha256 FROM remote_media_cache WHERE media_origin = $1"
                                       " AND media_id = $2", origin, media_id)
                if sha:
                    hashes.add(sha)
            changed = "quarantined_by IS NULL" if quarantined_by is not None else "quarantined_by IS NOT NULL"
            count = 0
            for column, values in (("media_id", sorted(bare_ids)), ("sha256", sorted(hashes))):
                for chunk in _chunks(values):
                    where = Where()
                    qb = where.arg(quarantined_by)
                    rows = await c.fetch(
                        f"UPDATE local_media SET quarantined_by = {qb} WHERE {column} IN ({where.marks(chunk)})"
                        f" AND {changed}{skip_safe} RETURNING media_id", *where.args)
                    count += len(rows)
            for chunk in _chunks(sorted(hashes)):
                where = Where()
                qb = where.arg(quarantined_by)
                rows = await c.fetch(
                    f"UPDATE remote_media_cache SET quarantined_by = {qb} WHERE sha256 IN ({where.marks(chunk)})"
                    f" AND {changed} RETURNING media_id", *where.args)
                count += len(rows)
            return count

        return await self.db.run_transaction("media_set_quarantine", txn)

    async def user_media_ids(self, user_id: str) -> list[str]:
        """The user's uploads not yet quarantined (what a quarantine of the user's media names)."""
        rows = await self.db.fetch("SELECT media_id FROM local_media WHERE user_id = $1 AND quarantined_by IS NULL",
                                   user_id)
        return [r["media_id"] for r in rows]

    async def set_protected(self, media_id: str, safe: bool) -> None:
        await self.db.execute("UPDATE local_media SET safe_from_quarantine = $2 WHERE media_id = $1",
                              media_id, int(safe))

    # -- listing ---------------------------------------------------------------------------------------
    async def list_user_media(self, user_id: str, offset: int, limit: int, order_by: str,
                              descending: bool) -> tuple[list[dict[str, Any]], int]:
        """(one page of the user's local media, how many in all), ordered by `order_by` then media ID.
        NULLs sort as the largest values on both engines (PostgreSQL's default)."""
        if order_by not in USER_MEDIA_ORDERS:  # the handler checked it; the column goes into the SQL
            raise ValueError(f"unknown order {order_by!r}")
        total = await self.db.fetchval("SELECT COUNT(*) FROM local_media WHERE user_id = $1", user_id)
        direction = "DESC NULLS FIRST" if descending else "ASC NULLS LAST"
        rows = await self.db.fetch(
            f"SELECT {LOCAL_COLUMNS} FROM local_media WHERE user_id = $1"
            f" ORDER BY {order_by} {direction}, media_id ASC LIMIT $2 OFFSET $3", user_id, limit, offset)
        return [dict(r) for r in rows], int(total or 0)

    async def room_event_contents(self, room_id: str, before: int | None, limit: int,
                                  ) -> list[tuple[int, str]]:
        """(stream ordering, event JSON) of the room's events that may name media (their JSON has an
        `mxc://`), newest first, before `before` (None: from the newest)."""
        where = Where()
        where.add("room_id = {}", room_id)
        where.add("json LIKE {}", "%mxc://%")
        if before is not None:
            where.add("stream_ordering < {}", before)
        rows = await self.db.fetch(f"SELECT stream_ordering, json FROM events WHERE {where}"
                                   f" ORDER BY stream_ordering DESC LIMIT {where.arg(limit)}", *where.args)
        return [(int(r["stream_ordering"]), str(r["json"])) for r in rows]

    # -- what to delete --------------------------------------------------------------------------------
    async def old_local_media(self, before_ts: int, size_gt: int, *, include_quarantined: bool,
                              include_protected: bool, after_id: str, limit: int) -> list[str]:
        """A batch of uploaded local media last accessed (or, never accessed, created) before
        `before_ts` and larger than `size_gt` bytes, by media ID after `after_id`."""
        where = Where()
        where.add("sha256 IS NOT NULL")
        where.add("COALESCE(last_access_ts, created_ts) < {}", before_ts)
        where.add("media_length > {}", size_gt)
        where.add("media_id > {}", after_id)
        if not include_quarantined:
            where.add("quarantined_by IS NULL")
        if not include_protected:
            where.add("safe_from_quarantine = 0")
        rows = await self.db.fetch(f"SELECT media_id FROM local_media WHERE {where}"
                                   f" ORDER BY media_id LIMIT {where.arg(limit)}", *where.args)
        return [r["media_id"] for r in rows]

    async def old_remote_media(self, before_ts: int, limit: int) -> list[tuple[str, str]]:
        """A batch of cached remote media last accessed before `before_ts`. Quarantined copies stay
        (as in Synapse): their rows are what keeps the media from being fetched and served again."""
        rows = await self.db.fetch(
            "SELECT media_origin, media_id FROM remote_media_cache WHERE COALESCE(last_access_ts, created_ts) < $1"
            " AND quarantined_by IS NULL ORDER BY media_origin, media_id LIMIT $2", before_ts, limit)
        return [(r["media_origin"], r["media_id"]) for r in rows]

    async def avatar_urls(self) -> set[str]:
        """This server's `mxc://` URIs in use as avatars: users' profiles, and the current state's room
        avatars and per-room member avatars (Synapse also keeps every past member avatar; hs only what
        the rooms show now). Only JSON naming this server's media is fetched and parsed."""
        pattern = _mxc_pattern(self.server_name)
        rows = await self.db.fetch("SELECT avatar_url FROM profiles WHERE avatar_url LIKE $1 ESCAPE '\\'", pattern)
        urls = {r["avatar_url"] for r in rows}
        rows = await self.db.fetch(
            "SELECT e.json FROM current_state_events c JOIN events e ON e.event_id = c.event_id"
            " WHERE c.type IN ('m.room.avatar', 'm.room.member') AND e.json LIKE $1 ESCAPE '\\'",
            "%" + pattern)
        from hs.util import json_loads

        for r in rows:
            try:
                content = json_loads(r["json"]).get("content") or {}
            except ValueError:
                continue
            for key in ("url", "avatar_url"):
                value = content.get(key) if isinstance(content, dict) else None
                if isinstance(value, str):
                    urls.add(value)
        return urls

    async def pending_of_user(self, user_id: str) -> list[str]:
        rows = await self.db.fetch("SELECT media_id FROM local_media WHERE user_id = $1 AND sha256 IS NULL",
                                   user_id)
        return [r["media_id"] for r in rows]

    # -- removing rows ---------------------------------------------------------------------------------
    async def delete_local(self, media_ids: Sequence[str]) -> list[tuple[str, str | None]]:
        """Remove local media rows: (media ID, its bytes' hash) of each row removed."""
        out: list[tuple[str, str | None]] = []
        for chunk in _chunks(list(media_ids)):
            where = Where()
            rows = await self.db.fetch(f"DELETE FROM local_media WHERE media_id IN ({where.marks(chunk)})"
                                       " RETURNING media_id, sha256", *where.args)
            out.extend((r["media_id"], r["sha256"]) for r in rows)
        return out

    async def delete_remote(self, keys: Sequence[tuple[str, str]]) -> list[str]:
        """Remove cached remote media rows (unless quarantined meanwhile): their bytes' hashes."""
        hashes: list[str] = []
        for origin, media_id in keys:
            rows = await self.db.fetch(
                "DELETE FROM remote_media_cache WHERE media_origin = $1 AND media_id = $2"
                " AND quarantined_by IS NULL RETURNING sha256", origin, media_id)
            hashes.extend(r["sha256"] for r in rows)
        return hashes

    # -- files -----------------------------------------------------------------------------------------
    async def hashes_in_use(self, hashes: Sequence[str]) -> set[str]:
        """Which of `hashes` a local or remote media row still names."""
        used: set[str] = set()
        for chunk in _chunks(list(hashes)):
            where = Where()
            marks = where.marks(chunk)
            rows = await self.db.fetch(f"SELECT sha256 FROM local_media WHERE sha256 IN ({marks}) UNION"
                                       f" SELECT sha256 FROM remote_media_cache WHERE sha256 IN ({marks})",
                                       *where.args)
            used.update(r["sha256"] for r in rows)
        return used

    async def take_thumbnails(self, sha256: str) -> list[dict[str, Any]]:
        """Remove the thumbnail rows of a file: (width, height, method, media_type) of each, so their
        files can go too."""
        rows = await self.db.fetch("DELETE FROM media_thumbnails WHERE sha256 = $1"
                                   " RETURNING width, height, method, media_type", sha256)
        return [dict(r) for r in rows]
