"""The media repository service: uploads (direct, and to IDs reserved with /create), the media a
download names (local, or remote through hs/media/remote.py), and the limits on both.

An upload is streamed to a temporary file in the local store while its SHA-256 and length are taken,
cut off as soon as it passes `max_upload_size`; only a complete file is renamed into place (under its
hash) and only then is its row written, so a failed or refused upload leaves nothing behind. Images
get their configured thumbnails before the upload is answered (hs/media/thumbnails.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from hs.db.stores.media import MediaInfo, MediaStore
from hs.errors import (
    cannot_overwrite_media,
    forbidden,
    limit_exceeded,
    not_found,
    not_yet_uploaded,
    too_large,
)
from hs.media.storage import StorageBackend, content_key
from hs.util import now_ms, random_string

if TYPE_CHECKING:
    from hs.media.remote import RemoteMedia
    from hs.media.storage import MediaFiles
    from hs.media.thumbnails import Thumbnails
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

MEDIA_ID_LENGTH = 24
# The longest a download waits for a reserved ID's upload (the spec's default is 20 s; it asks servers
# to cap what clients may ask for).
MAX_UPLOAD_WAIT_MS = 60_000
# How often a waiting download re-reads the database, for uploads that arrive on another process.
UPLOAD_POLL_S = 0.5
# Last-access times feed media retention, which counts in days: written at most this often per file.
TOUCH_INTERVAL_MS = 600_000
MAX_UPLOAD_NAME_LENGTH = 255
MAX_MEDIA_TYPE_LENGTH = 255


class MediaRepository:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.config = hs.config
        self.server_name = hs.server_name
        self.store = MediaStore(hs.db, hs.server_name)
        self._upload_events: dict[str, asyncio.Event] = {}
        self._touched: dict[tuple[str, str], int] = {}

    @property
    def files(self) -> MediaFiles:
        return self.hs.media_files

    @property
    def thumbnails(self) -> Thumbnails:
        return self.hs.media_thumbnails

    @property
    def remote(self) -> RemoteMedia:
        return self.hs.media_remote

    # -- uploads ---------------------------------------------------------------------------------------
    async def upload(self, user_id: str, body: AsyncIterator[bytes], declared_length: int | None,
                     media_type: str | None, upload_name: str | None) -> str:
        """Store an upload under a new media ID; the `mxc://` URI."""
        media_type, upload_name = _clean_type(media_type), _clean_name(upload_name)
        sha256, length = await self._store_upload(user_id, body, declared_length)
        media_id = random_string(MEDIA_ID_LENGTH)
        await self.store.add_local(media_id, user_id, media_type, upload_name, length, sha256,
                                   self.config.enable_authenticated_media)
        await self.store.inherit_quarantine(sha256, media_id)
        await self._after_store(sha256, media_type)
        return f"mxc://{self.server_name}/{media_id}"

    async def store_file(self, user_id: str | None, path: Path, media_type: str, upload_name: str | None) -> str:
        """Store a file this server made or fetched itself (a URL preview's image) as local media; the
        `mxc://` URI. `path` is left in place."""
        temp = self.files.local.new_temp_path()
        try:
            sha256, length = await asyncio.to_thread(_copy_hashing, path, temp)
            await self.files.adopt(content_key(sha256), temp)
        finally:
            temp.unlink(missing_ok=True)
        media_id = random_string(MEDIA_ID_LENGTH)
        await self.store.add_local(media_id, user_id or f"@:{self.server_name}", media_type, upload_name, length,
                                   sha256, self.config.enable_authenticated_media)
        await self.store.inherit_quarantine(sha256, media_id)
        await self._after_store(sha256, media_type)
        return f"mxc://{self.server_name}/{media_id}"

    async def create(self, user_id: str) -> tuple[str, int]:
        """Reserve a media ID for a later upload: (`mxc://` URI, when the reservation lapses). At most
        `max_pending_media_uploads` reservations per user wait at once (429 beyond)."""
        now = now_ms()
        pending, first_expiry = await self.store.count_pending(user_id, now)
        if pending >= self.config.max_pending_media_uploads:
            raise limit_exceeded(max(1, (first_expiry or now) - now))
        media_id = random_string(MEDIA_ID_LENGTH)
        expires = now + self.config.unused_expiration_time
        await self.store.reserve_local(media_id, user_id, expires, self.config.enable_authenticated_media)
        return f"mxc://{self.server_name}/{media_id}", expires

    async def upload_reserved(self, user_id: str, server_name: str, media_id: str, body: AsyncIterator[bytes],
                              declared_length: int | None, media_type: str | None, upload_name: str | None) -> None:
        """The upload of an ID reserved with `create`: only by whoever reserved it, once, in time."""
        if server_name != self.server_name:
            raise not_found("Unknown media ID")
        info = await self.store.get_local(media_id)
        if info is None or (not info.uploaded and (info.unused_expires_ts or 0) <= now_ms()):
            raise not_found("Unknown media ID")
        if info.user_id != user_id:
            raise forbidden("You may not upload to a media ID you did not create")
        if info.uploaded:
            raise cannot_overwrite_media()
        media_type, upload_name = _clean_type(media_type), _clean_name(upload_name)
        sha256, length = await self._store_upload(user_id, body, declared_length)
        if not await self.store.fill_reserved(media_id, media_type, upload_name, length, sha256):
            raise cannot_overwrite_media()
        await self.store.inherit_quarantine(sha256, media_id)
        await self._after_store(sha256, media_type)
        event = self._upload_events.pop(media_id, None)
        if event is not None:
            event.set()

    async def _store_upload(self, user_id: str, body: AsyncIterator[bytes], declared_length: int | None,
                            ) -> tuple[str, int]:
        """Receive an upload within the size limits and store its bytes: (SHA-256, length)."""
        await self._check_size(user_id, declared_length)
        temp, sha256, length = await self.receive(body)
        try:
            await self._check_size(user_id, length)
            await self.files.adopt(content_key(sha256), temp)
        finally:
            temp.unlink(missing_ok=True)
        return sha256, length

    async def receive(self, body: AsyncIterator[bytes], limit: int | None = None) -> tuple[Path, str, int]:
        """Write a body to a temporary file of the local store: (path, SHA-256, length). Over `limit`
        (default `max_upload_size`) the file is dropped and 413 M_TOO_LARGE raised."""
        limit = self.config.max_upload_size if limit is None else limit
        temp = self.files.local.new_temp_path()
        digest = hashlib.sha256()
        length = 0
        try:
            with open(temp, "wb") as out:
                async for chunk in body:
                    length += len(chunk)
                    if length > limit:
                        raise too_large(f"Cannot upload files larger than {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp, digest.hexdigest(), length

    async def _check_size(self, user_id: str, length: int | None) -> None:
        """`max_upload_size` (413) and the user's `media_upload_limits` (403, as the spec says for quotas)."""
        if length is None:
            return
        if length > self.config.max_upload_size:
            raise too_large(f"Cannot upload files larger than {self.config.max_upload_size} bytes")
        now = now_ms()
        for limit in self.config.media_upload_limits:
            used = await self.store.uploaded_since(user_id, now - limit.time_period)
            if used + length > limit.max_size:
                raise forbidden(f"Upload quota exceeded: at most {limit.max_size} bytes per "
                                f"{limit.time_period // 1000} s")

    async def _after_store(self, sha256: str, media_type: str | None) -> None:
        try:
            await self.thumbnails.on_stored(sha256, media_type)
        except Exception:
            # The upload stands without thumbnails; a thumbnail request reports the problem.
            logger.exception("thumbnailing %s (%s) failed", sha256, media_type)

    # -- what a download names ---------------------------------------------------------------------------
    async def get_media(self, server_name: str, media_id: str, *, legacy: bool, allow_remote: bool = True,
                        timeout_ms: int = 20_000, client_address: str | None = None) -> MediaInfo:
        """The uploaded media a download names, waiting up to `timeout_ms` for a reserved ID's upload;
        404 for unknown or quarantined media, and on the legacy unauthenticated endpoints for media
        uploaded while `enable_authenticated_media` was on."""
        if server_name == self.server_name:
            info = await self._local_when_uploaded(media_id, min(max(timeout_ms, 0), MAX_UPLOAD_WAIT_MS))
        elif not allow_remote:
            raise not_found("Not found")
        else:
            info = await self.remote.get(server_name, media_id, legacy=legacy, timeout_ms=timeout_ms,
                                         client_address=client_address)
        if info.quarantined_by is not None or (legacy and info.authenticated):
            raise not_found("Not found")
        await self._touch(info)
        return info

    async def _local_when_uploaded(self, media_id: str, timeout_ms: int) -> MediaInfo:
        info = await self.store.get_local(media_id)
        if info is None:
            raise not_found("Not found")
        if info.uploaded:
            return info
        deadline = asyncio.get_running_loop().time() + timeout_ms / 1000
        event = self._upload_events.setdefault(media_id, asyncio.Event())
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise not_yet_uploaded()
            try:
                await asyncio.wait_for(event.wait(), min(remaining, UPLOAD_POLL_S))
            except TimeoutError:
                pass
            info = await self.store.get_local(media_id)
            if info is None:
                raise not_found("Not found")
            if info.uploaded:
                return info

    async def _touch(self, info: MediaInfo) -> None:
        key = (info.server_name, info.media_id)
        now = now_ms()
        if now - self._touched.get(key, 0) < TOUCH_INTERVAL_MS:
            return
        if len(self._touched) > 100_000:
            self._touched.clear()
        self._touched[key] = now
        if info.server_name == self.server_name:
            await self.store.touch_local(info.media_id)
        else:
            await self.store.touch_remote(info.server_name, info.media_id)

    async def locate(self, info: MediaInfo) -> tuple[StorageBackend, str, int]:
        """Where the media's bytes are: (store, key, size); 404 if no store has them (deleted files)."""
        assert info.sha256 is not None
        key = content_key(info.sha256)
        found = await self.files.locate(key)
        if found is None:
            logger.warning("media %s/%s: file %s is missing from every store", info.server_name, info.media_id, key)
            raise not_found("Not found")
        return found[0], key, found[1]


def _copy_hashing(source: Path, target: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    length = 0
    with open(source, "rb") as src, open(target, "wb") as out:
        while chunk := src.read(256 * 1024):
            digest.update(chunk)
            length += len(chunk)
            out.write(chunk)
    return digest.hexdigest(), length


def _clean_type(media_type: str | None) -> str:
    value = (media_type or "").strip()
    if not value or len(value) > MAX_MEDIA_TYPE_LENGTH or any(ord(c) < 0x20 for c in value):
        return "application/octet-stream"
    return value


def _clean_name(name: str | None) -> str | None:
    if not name:
        return None
    name = "".join(c for c in name if ord(c) >= 0x20 and c not in "/\\")
    return name[:MAX_UPLOAD_NAME_LENGTH] or None



