"""The media admin service behind Synapse's media admin API (hs/api/client/admin_media.py) and media
retention (hs/media/background.py): quarantine, protection, listing, and deleting media with its files.

Files are content-addressed (hs/media/storage.py): the same bytes uploaded twice, or cached from two
servers, are one file. So deleting media removes its row, and the file and its thumbnails go only when
no other row names the same hash any more. A quarantine likewise applies to the bytes, as Synapse's
does since it tracks hashes: every local or cached remote copy of them is quarantined (protected
local copies excepted), and a release frees them all.

Left to the rest of the repository: a new upload of bytes already quarantined is not quarantined on
arrival (Synapse does that; hs/media/repository.py would check the hash), and a file is deleted by
hash right after its last row goes, so an upload of the very same bytes racing that deletion (after it
found the file present, before its row is written) can lose its file: the download then answers 404.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hs.db.stores.media_admin import MediaAdminStore
from hs.errors import bad_request, not_found
from hs.media.storage import content_key, thumbnail_key
from hs.util import json_loads

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

_MXC = re.compile(r"mxc://([^/?#]+)/([^/?#]+)\Z")
# Rows read or deleted per statement batch; a room's events read per page.
BATCH = 500
ROOM_EVENTS_PAGE = 500


def parse_mxc(url: object) -> tuple[str, str] | None:
    """(server name, media ID) of an `mxc://` URI, or None for anything else."""
    if not isinstance(url, str):
        return None
    match = _MXC.match(url)
    return (match.group(1), match.group(2)) if match else None


def _media_urls(content: Any) -> Iterable[object]:
    """The media URLs an event's content may name: the file (`url`, or `file.url` when encrypted) and
    its thumbnail (`info.thumbnail_url`, or `info.thumbnail_file.url`)."""
    if not isinstance(content, dict):
        return
    yield content.get("url")
    file = content.get("file")
    if isinstance(file, dict):
        yield file.get("url")
    info = content.get("info")
    if isinstance(info, dict):
        yield info.get("thumbnail_url")
        thumb = info.get("thumbnail_file")
        if isinstance(thumb, dict):
            yield thumb.get("url")


class MediaAdmin:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.server_name = hs.server_name
        self.store = MediaAdminStore(hs.db, hs.server_name)

    # -- reading -----------------------------------------------------------------------------------------
    async def media_info(self, server_name: str, media_id: str) -> dict[str, Any]:
        """Synapse's `media_info` of local or cached remote media; 404 "Unknown media" otherwise."""
        if server_name == self.server_name:
            row = await self.store.local_row(media_id)
            if row is None:
                raise not_found("Unknown media")
            return {"media_origin": None, "user_id": row["user_id"], "media_id": row["media_id"],
                    "media_type": row["media_type"], "media_length": row["media_length"],
                    "upload_name": row["upload_name"], "created_ts": row["created_ts"], "filesystem_id": None,
                    "url_cache": None, "last_access_ts": row["last_access_ts"],
                    "quarantined_by": row["quarantined_by"], "authenticated": bool(row["authenticated"]),
                    "safe_from_quarantine": bool(row["safe_from_quarantine"]), "sha256": row["sha256"]}
        row = await self.store.remote_row(server_name, media_id)
        if row is None:
            raise not_found("Unknown media")
        # The file of a cached copy is named by its hash here (Synapse names it by a filesystem ID).
        return {"media_origin": row["media_origin"], "user_id": None, "media_id": row["media_id"],
                "media_type": row["media_type"], "media_length": row["media_length"],
                "upload_name": row["upload_name"], "created_ts": row["created_ts"], "filesystem_id": row["sha256"],
                "url_cache": None, "last_access_ts": row["last_access_ts"],
                "quarantined_by": row["quarantined_by"], "authenticated": bool(row["authenticated"]),
                "safe_from_quarantine": None, "sha256": row["sha256"]}

    async def room_media(self, room_id: str) -> tuple[list[str], list[str]]:
        """(local, remote) `mxc://` URIs the room's events name, newest event first, each once. As in
        Synapse, encrypted events name nothing that can be read."""
        local: dict[str, None] = {}
        remote: dict[str, None] = {}
        before: int | None = None
        while True:
            page = await self.store.room_event_contents(room_id, before, ROOM_EVENTS_PAGE)
            for stream_ordering, raw in page:
                before = stream_ordering
                try:
                    event = json_loads(raw)
                except ValueError:
                    continue
                for url in _media_urls(event.get("content") if isinstance(event, dict) else None):
                    parsed = parse_mxc(url)
                    if parsed is not None:
                        (local if parsed[0] == self.server_name else remote)[f"mxc://{parsed[0]}/{parsed[1]}"] = None
            if len(page) < ROOM_EVENTS_PAGE:
                return list(local), list(remote)

    async def user_media(self, user_id: str, offset: int, limit: int, order_by: str,
                         descending: bool) -> tuple[list[dict[str, Any]], int]:
        rows, total = await self.store.list_user_media(user_id, offset, limit, order_by, descending)
        return [_user_media_json(r) for r in rows], total

    # -- quarantine and protection -------------------------------------------------------------------------
    async def quarantine(self, server_name: str, media_id: str, by: str | None) -> int:
        """Quarantine one piece of media (and every copy of its bytes); `by` None releases it."""
        if server_name == self.server_name:
            return await self.store.set_quarantine([media_id], [], by)
        return await self.store.set_quarantine([], [(server_name, media_id)], by)

    async def quarantine_room(self, room_id: str, by: str) -> int:
        local, remote = await self.room_media(room_id)
        local_ids = [mxc.rpartition("/")[2] for mxc in local]
        remote_keys = [parsed for mxc in remote if (parsed := parse_mxc(mxc)) is not None]
        return await self.store.set_quarantine(local_ids, remote_keys, by)

    async def quarantine_user(self, user_id: str, by: str) -> int:
        return await self.store.set_quarantine(await self.store.user_media_ids(user_id), [], by)

    async def protect(self, media_id: str, safe: bool) -> None:
        await self.store.set_protected(media_id, safe)

    # -- deleting -------------------------------------------------------------------------------------------
    async def delete_local_media(self, media_ids: list[str]) -> list[str]:
        """Delete local media (rows, then files no row names any more): the IDs deleted."""
        deleted = await self.store.delete_local(media_ids)
        await self.release_files(sha for _, sha in deleted if sha)
        return [media_id for media_id, _ in deleted]

    async def delete_old_local_media(self, before_ts: int, size_gt: int = 0, *, keep_profiles: bool = True,
                                     include_quarantined: bool = True, include_protected: bool = True,
                                     max_batches: int | None = None) -> list[str]:
        """Delete local media last accessed before `before_ts` and larger than `size_gt` bytes, keeping
        avatars with `keep_profiles`; at most `max_batches` batches of BATCH (None: all of it)."""
        keep: set[str] = set()
        if keep_profiles:
            keep = {parsed[1] for url in await self.store.avatar_urls()
                    if (parsed := parse_mxc(url)) is not None and parsed[0] == self.server_name}
        deleted: list[str] = []
        after = ""
        batches = 0
        while max_batches is None or batches < max_batches:
            batches += 1
            ids = await self.store.old_local_media(before_ts, size_gt, include_quarantined=include_quarantined,
                                                   include_protected=include_protected, after_id=after,
                                                   limit=BATCH)
            if not ids:
                break
            after = ids[-1]
            doomed = [i for i in ids if i not in keep]
            if doomed:
                deleted.extend(await self.delete_local_media(doomed))
            if len(ids) < BATCH:
                break
        return deleted

    async def delete_old_remote_media(self, before_ts: int, *, max_batches: int | None = None) -> int:
        """Drop cached remote media not accessed since `before_ts` (not quarantined copies: their rows
        keep them blocked); how many. Asked for again, they are fetched again."""
        total = 0
        batches = 0
        while max_batches is None or batches < max_batches:
            batches += 1
            keys = await self.store.old_remote_media(before_ts, BATCH)
            if not keys:
                break
            hashes = await self.store.delete_remote(keys)
            total += len(hashes)
            await self.release_files(hashes)
            if len(keys) < BATCH:
                break
        return total

    async def release_files(self, hashes: Iterable[str]) -> None:
        """Delete the files (content and thumbnails, in every store) of those hashes no row names."""
        wanted = sorted(set(hashes))
        if not wanted:
            return
        used = await self.store.hashes_in_use(wanted)
        for sha256 in wanted:
            if sha256 not in used:
                await self.delete_file(sha256)

    async def delete_file(self, sha256: str) -> None:
        """Delete a file no row names, with its thumbnails (rows and files)."""
        files = self.hs.media_files
        for thumb in await self.store.take_thumbnails(sha256):
            await files.delete(thumbnail_key(sha256, thumb["width"], thumb["height"], thumb["method"],
                                             thumb["media_type"]))
        thumb_dir = files.local.path(f"thumbnails/{sha256[:2]}/{sha256[2:4]}/{sha256}")
        await asyncio.to_thread(shutil.rmtree, thumb_dir, True)
        await files.delete(content_key(sha256))
        logger.debug("deleted media file %s", sha256)


def _user_media_json(row: dict[str, Any]) -> dict[str, Any]:
    """One entry of Synapse's "list media of a user" (its LocalMedia fields)."""
    return {"media_id": row["media_id"], "media_type": row["media_type"], "media_length": row["media_length"],
            "upload_name": row["upload_name"], "created_ts": row["created_ts"], "url_cache": None,
            "last_access_ts": row["last_access_ts"], "quarantined_by": row["quarantined_by"],
            "safe_from_quarantine": bool(row["safe_from_quarantine"]), "user_id": row["user_id"],
            "authenticated": bool(row["authenticated"]), "sha256": row["sha256"]}


def check_local(admin: MediaAdmin, server_name: str) -> None:
    """Synapse's 400 for deleting another server's media."""
    if server_name != admin.server_name:
        raise bad_request("Can only delete local media")
