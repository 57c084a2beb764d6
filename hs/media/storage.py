"""Where media files live: `media_store_path` on the local filesystem, plus optional storage providers
(S3) that keep a second copy and serve what the local store no longer has.

Files are content-addressed. A file is named by the SHA-256 of its bytes, so the same bytes uploaded
twice (or fetched from two servers) are stored once and a half-written file can never be served under
a finished file's name: a file is written to a temporary name in the store's `tmp/` folder, fsynced,
then renamed into place. Keys look like `content/ab/cd/<sha256>` and
`thumbnails/ab/cd/<sha256>/<width>-<height>-<method>.<ext>`.

Reads and writes stream in chunks: nothing here holds a whole file in memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hs.config import HomeserverConfig, MediaStorageProvider

logger = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024


def content_key(sha256: str) -> str:
    """The store key of a file's bytes."""
    return f"content/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def thumbnail_key(sha256: str, width: int, height: int, method: str, media_type: str) -> str:
    """The store key of one thumbnail of a file."""
    ext = media_type.rpartition("/")[2] or "bin"
    return f"thumbnails/{sha256[:2]}/{sha256[2:4]}/{sha256}/{width}-{height}-{method}.{ext}"


class StorageBackend:
    """One place files can be kept (the local filesystem, an S3 bucket). Keys are relative paths."""

    name = "backend"

    async def put(self, key: str, source: Path) -> None:
        """Store the complete file at `source` under `key` (`source` is left in place)."""
        raise NotImplementedError

    async def size(self, key: str) -> int | None:
        """The stored file's size in bytes, or None if it is not here."""
        raise NotImplementedError

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes of [start, end) (end None: to the end of the file), in chunks."""
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        """Remove the file (no error if it is not here)."""
        raise NotImplementedError

    async def close(self) -> None:
        return None


class LocalStorage(StorageBackend):
    """Files under one folder; writes go through `tmp/` and a rename, so they appear whole or not at all."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"

    def path(self, key: str) -> Path:
        if ".." in key.split("/") or key.startswith("/"):
            raise ValueError(f"bad media key {key!r}")
        return self.root / key

    def new_temp_path(self, suffix: str = "") -> Path:
        """A fresh file name in the store's temporary folder (same filesystem: renames are atomic)."""
        import secrets

        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self.tmp_dir / f"{secrets.token_hex(12)}{suffix}"

    async def put(self, key: str, source: Path) -> None:
        await asyncio.to_thread(self._copy_in, key, source)

    def _copy_in(self, key: str, source: Path) -> None:
        temp = self.new_temp_path()
        try:
            shutil.copyfile(source, temp)
            self._adopt(key, temp)
        finally:
            temp.unlink(missing_ok=True)

    async def adopt(self, key: str, temp: Path) -> None:
        """Move a finished temporary file of this store into place under `key` (fsynced first). If the
        key already exists (the same bytes were stored before), the temporary file is dropped."""
        await asyncio.to_thread(self._adopt, key, temp)

    def _adopt(self, key: str, temp: Path) -> None:
        target = self.path(key)
        if target.exists():
            temp.unlink(missing_ok=True)
            # The same bytes stored again: the file counts as new for the sweep of unused files (which
            # spares young files), narrowing the window where it could delete it under a new row.
            os.utime(target)
            return
        _fsync(temp)
        self._rename_in(temp, target)

    @staticmethod
    def _rename_in(temp: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def size(self, key: str) -> int | None:
        try:
            return (await asyncio.to_thread(self.path(key).stat)).st_size
        except FileNotFoundError:
            return None

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(open, self.path(key), "rb")
        try:
            if start:
                await asyncio.to_thread(handle.seek, start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                want = CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining)
                chunk = await asyncio.to_thread(handle.read, want)
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            handle.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path(key).unlink, True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MediaFiles:
    """The local store plus the configured providers: writes go local first then to the providers the
    entry's `store_local`/`store_remote` name (awaited if `store_synchronous`, else in the background);
    reads take the local file, else the first provider that has it."""

    def __init__(self, local: LocalStorage, providers: list[tuple[MediaStorageProvider, StorageBackend]]) -> None:
        self.local = local
        self.providers = providers
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, config: HomeserverConfig) -> MediaFiles:
        providers: list[tuple[MediaStorageProvider, StorageBackend]] = []
        for entry in config.media_storage_providers:
            from hs.media.s3 import S3Storage

            providers.append((entry, S3Storage.from_provider_config(entry.config)))
        return cls(LocalStorage(config.resolve_path(config.media_store_path)), providers)

    async def adopt(self, key: str, temp: Path, *, remote: bool = False) -> None:
        """Take a finished temporary file of the local store in as `key`, and copy it to the providers."""
        await self.local.adopt(key, temp)
        await self.copy_to_providers(key, remote=remote)

    async def copy_to_providers(self, key: str, *, remote: bool = False) -> None:
        for entry, backend in self.providers:
            if not (entry.store_remote if remote else entry.store_local):
                continue
            if entry.store_synchronous:
                await backend.put(key, self.local.path(key))
            else:
                task = asyncio.get_running_loop().create_task(self._put_later(backend, key))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _put_later(self, backend: StorageBackend, key: str) -> None:
        try:
            await backend.put(key, self.local.path(key))
        except Exception:
            logger.exception("copying %s to the %s media store failed", key, backend.name)

    async def locate(self, key: str) -> tuple[StorageBackend, int] | None:
        """Which store has the file, and its size (None: no store has it)."""
        size = await self.local.size(key)
        if size is not None:
            return self.local, size
        for _, backend in self.providers:
            size = await backend.size(key)
            if size is not None:
                return backend, size
        return None

    async def ensure_local(self, key: str) -> Path | None:
        """The file as a local path (fetched back from a provider if only it has it), for work that
        needs a real file (thumbnailing). None if no store has it."""
        path = self.local.path(key)
        if await self.local.size(key) is not None:
            return path
        for _, backend in self.providers:
            if await backend.size(key) is None:
                continue
            temp = self.local.new_temp_path()
            try:
                out = await asyncio.to_thread(open, temp, "wb")
                try:
                    async for chunk in backend.read(key):
                        await asyncio.to_thread(out.write, chunk)
                finally:
                    out.close()
                await self.local.adopt(key, temp)
            finally:
                temp.unlink(missing_ok=True)
            return path
        return None

    async def delete(self, key: str) -> None:
        await self.local.delete(key)
        for _, backend in self.providers:
            await backend.delete(key)

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for _, backend in self.providers:
            await backend.close()
