"""Thumbnails of stored images: made in a small pool of worker processes, kept in the media store,
and chosen for each request as Synapse chooses them.

When. The configured `thumbnail_sizes` are made when a file is stored (`on_stored`, awaited before
the upload is answered), all from one decode (hs/media/thumbnailer.py). Other thumbnails are made on
request: the exact size asked for when `dynamic_thumbnails` is on (at most `MAX_DYNAMIC_PER_FILE` of
them per file, each side at most `dynamic_max_side`), and animated WebP thumbnails (`animated=true`)
of animated GIF, WebP and APNG images. Concurrent requests for a thumbnail not made yet wait for one
job. A file whose thumbnails are missing (made before a crash, or lost from the store) gets its
configured sizes again on the first request.

Where. Each thumbnail is a file of the media store under `thumbnail_key(sha256, w, h, method, type)`
and a `media_thumbnails` row, both named by the SOURCE file's hash: every media ID naming the same
bytes (a re-upload, a cached remote copy) shares them, and they survive restarts. Rows hold the
thumbnail's real size (a `scale` thumbnail of a small image is the image's own size).

Work. Pillow runs in a `ProcessPoolExecutor` of at most two processes, created on first use and
spawned, not forked (the server's threads and locks stay out of them), without re-running the
server's `__main__` (see `_WorkerProcess`). At most `JOBS_PER_PROCESS` jobs per process are handed
to it at once; others wait in the event loop. A worker that dies (a decoder crash, the OOM killer)
breaks the pool: it is replaced, and the jobs it took with it are tried once more on the new one.
What a file's header says (size, animation, or why it is refused) is kept for the last
`HEADER_CACHE_SIZE` files asked about, so only the first request of a refused image reads it.

Choice (`select`), as Synapse's: among the thumbnails of the asked method, the smallest one at least
as large as asked (for `crop` both sides; for `scale`, one side: a scale thumbnail fills its box on
one side only), else the largest one; if there are none of that method, the same among all.

Errors (the spec's, and Synapse's where the spec leaves a choice):
- an image over `max_image_pixels` (or a decompression bomb) is 413 M_TOO_LARGE for local media and
  502 M_TOO_LARGE for remote media, the statuses the spec lists;
- media that is not an image, or that no thumbnail could be made of, is 400 M_UNKNOWN, as Synapse
  answers since 1.63 (the spec's 400 "the server cannot thumbnail the content"; Synapse answered 404
  M_NOT_FOUND before, which clients read as "the media is gone").
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import types
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hs.db.stores.media_thumbnails import MediaThumbnailStore, ThumbnailInfo
from hs.errors import MatrixError, bad_request, not_found, too_large
from hs.media import thumbnailer
from hs.media.serving import base_type
from hs.media.storage import StorageBackend, content_key, thumbnail_key
from hs.media.thumbnailer import ANIMATED_MEDIA_TYPE, Header, Made, Refused, output_size

if TYPE_CHECKING:
    from hs.db.stores.media import MediaInfo
    from hs.server import HomeServer

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Declared types worth trying (Synapse's list, plus APNG); what the file really is decides the rest.
THUMBNAILABLE_TYPES = frozenset({"image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/apng",
                                 "image/gif", "image/webp"})
MAX_WORKERS = 2
JOBS_PER_PROCESS = 2
# Thumbnails made on request beyond the configured sizes, per file (disk use is bounded per file).
MAX_DYNAMIC_PER_FILE = 20
# Dynamic thumbnails are made up to this size per side (or the largest configured size if larger);
# beyond it the closest pre-made thumbnail is served.
DYNAMIC_MAX_SIDE = 1600
# Headers of recently asked files (size, animation, or why they are refused), so requests that need
# them do not read the file again.
HEADER_CACHE_SIZE = 4096
CLOSE_TIMEOUT_S = 10.0


def thumbnailable(media_type: str | None) -> bool:
    return base_type(media_type) in THUMBNAILABLE_TYPES


def closest(thumbnails: Sequence[ThumbnailInfo], width: int, height: int, method: str) -> ThumbnailInfo | None:
    """Synapse's choice among pre-made thumbnails (see the module's docstring)."""
    same = [t for t in thumbnails if t.method == method] or list(thumbnails)
    if method == "crop":
        large = [t for t in same if t.width >= width and t.height >= height]
    else:
        large = [t for t in same if t.width >= width or t.height >= height]
    if large:
        return min(large, key=lambda t: (t.width * t.height, t.length))
    return max(same, key=lambda t: (t.width * t.height, -t.length)) if same else None


def _find(thumbnails: Sequence[ThumbnailInfo], size: tuple[int, int], method: str, *,
          animated: bool) -> ThumbnailInfo | None:
    for t in thumbnails:
        if (t.width, t.height) == size and t.method == method and (t.media_type == ANIMATED_MEDIA_TYPE) == animated:
            return t
    return None


def _info(made: Made) -> ThumbnailInfo:
    return ThumbnailInfo(made.width, made.height, made.method, made.media_type, made.length)


def refusal_error(refused: Refused, *, remote: bool) -> MatrixError:
    if refused.reason == "too_large":
        return too_large("Content is too large to thumbnail", status=502 if remote else 413)
    return bad_request("Cannot generate thumbnails for the requested content")


class _WorkerProcess(SpawnProcess):
    """A spawned process that does not run the server's `__main__` again.

    Python's spawn start method re-imports the parent's main module in every child (to find
    functions defined there): here that is the whole server (`hs.cli`, ~0.4 s and ~20 MB per worker)
    or, for a script without an `if __name__ == "__main__"` guard, the script itself, which would
    start a second server in the worker. The workers only run hs/media/thumbnailer.py, so the child
    is launched while `__main__` is a bare module (the launch itself is synchronous, in the caller's
    thread: the event loop's)."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        main = sys.modules["__main__"]
        sys.modules["__main__"] = _BARE_MAIN
        try:
            return SpawnProcess._Popen(process_obj)
        finally:
            sys.modules["__main__"] = main


class _WorkerContext(SpawnContext):
    Process = _WorkerProcess


_BARE_MAIN = types.ModuleType("__main__")


class Thumbnails:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.config = hs.config
        self.store = MediaThumbnailStore(hs.db)
        self.workers = max(1, min(MAX_WORKERS, os.cpu_count() or 1))
        self._pool: ProcessPoolExecutor | None = None
        self._slots = asyncio.Semaphore(self.workers * JOBS_PER_PROCESS)
        self._jobs: dict[Hashable, asyncio.Task[Any]] = {}
        self._headers: OrderedDict[str, Header | Refused] = OrderedDict()
        self._closed = False

    @property
    def sizes(self) -> list[tuple[int, int, str]]:
        return [(s.width, s.height, s.method) for s in self.config.thumbnail_sizes]

    @property
    def dynamic_max_side(self) -> int:
        return max([DYNAMIC_MAX_SIDE] + [max(w, h) for w, h, _ in self.sizes])

    # -- made when a file is stored -------------------------------------------------------------------
    async def on_stored(self, sha256: str, media_type: str | None, *, remote: bool = False) -> None:
        """A file was stored: make the configured thumbnail sizes if it is an image (nothing if it is
        not one, or is refused: the upload stands without thumbnails). `remote`: a cached copy of
        another server's media (its thumbnails go to the storage providers with `store_remote`)."""
        if not thumbnailable(media_type) or not self.sizes:
            return
        await self._once(("configured", sha256), lambda: self._make_configured(sha256, remote))

    async def _make_configured(self, sha256: str, remote: bool) -> None:
        if any(t.media_type != ANIMATED_MEDIA_TYPE for t in await self.store.get(sha256)):
            return  # the same bytes were stored (and thumbnailed) before
        source = await self._source(sha256)
        try:
            made = await self._run(thumbnailer.make_thumbnails, str(source), self.sizes, str(self._tmp_dir()),
                                   self.config.max_image_pixels)
        except Refused as refused:
            logger.info("no thumbnails of %s: %s (%s)", sha256, refused.reason, refused.detail)
            self._remember(sha256, refused)
            return
        await self._adopt(sha256, made, remote=remote)

    # -- chosen for a request -------------------------------------------------------------------------
    async def select(self, info: MediaInfo, width: int, height: int, method: str,
                     animated: bool) -> tuple[StorageBackend, str, int, str]:
        """The thumbnail to serve for a request: (store, key, size in bytes, media type). Makes it
        first if it is made on request. Raises the spec's errors (module docstring): 413/502
        M_TOO_LARGE, 400 M_UNKNOWN, 404 M_NOT_FOUND if the media has no file."""
        if info.sha256 is None:
            raise not_found("Not found")
        if not thumbnailable(info.media_type):
            raise bad_request("Cannot generate thumbnails for the requested content")
        remote = info.server_name != self.hs.server_name
        try:
            for _ in range(3):
                chosen = await self._choose(info.sha256, width, height, method, animated)
                key = thumbnail_key(info.sha256, chosen.width, chosen.height, chosen.method, chosen.media_type)
                found = await self.hs.media_files.locate(key)
                if found is not None:
                    return found[0], key, found[1], chosen.media_type
                await self._forget_missing(info.sha256)
        except Refused as refused:
            raise refusal_error(refused, remote=remote) from None
        raise bad_request("Cannot generate thumbnails for the requested content")

    async def _choose(self, sha256: str, width: int, height: int, method: str, animated: bool) -> ThumbnailInfo:
        still = await self._still(sha256)
        if not still and self.sizes:
            await self._header(sha256)  # refused images raise here
            try:
                await self._once(("configured", sha256), lambda: self._make_configured(sha256, False))
            except Exception:
                logger.exception("making the thumbnails of %s failed", sha256)
                self._remember(sha256, Refused("unsupported", "thumbnailing failed"))
            still = await self._still(sha256)
        chosen: ThumbnailInfo | None = None
        if self.config.dynamic_thumbnails and max(width, height) <= self.dynamic_max_side:
            chosen = await self._exact(sha256, still, width, height, method)
        if chosen is None:
            chosen = closest(still, width, height, method)
        if chosen is None:
            await self._header(sha256)
            raise Refused("unsupported", "no thumbnail could be made")
        if animated:
            chosen = await self._animated(sha256, chosen)
        return chosen

    async def _forget_missing(self, sha256: str) -> None:
        """Drop the rows of the file's thumbnails no store has any more (deleted by hand, a lost disk):
        the configured sizes are then made again, the others when next asked for."""
        for t in await self.store.get(sha256):
            key = thumbnail_key(sha256, t.width, t.height, t.method, t.media_type)
            if await self.hs.media_files.locate(key) is None:
                logger.warning("thumbnail %s is missing from every store: forgetting it", key)
                await self.store.delete(sha256, t)

    async def _still(self, sha256: str) -> list[ThumbnailInfo]:
        return [t for t in await self.store.get(sha256) if t.media_type != ANIMATED_MEDIA_TYPE]

    async def _exact(self, sha256: str, still: list[ThumbnailInfo], width: int, height: int,
                     method: str) -> ThumbnailInfo | None:
        """The thumbnail of exactly the size asked (dynamic thumbnails), made if it is not yet and the
        file has room for another; None beyond that."""
        header = await self._header(sha256)
        size = output_size(header.width, header.height, width, height, method)
        found = _find(still, size, method, animated=False)
        if found is not None or len(still) >= len(self.sizes) + MAX_DYNAMIC_PER_FILE:
            return found

        async def make() -> ThumbnailInfo | None:
            source = await self._source(sha256)
            made = await self._run(thumbnailer.make_thumbnails, str(source), [(width, height, method)],
                                   str(self._tmp_dir()), self.config.max_image_pixels)
            infos = await self._adopt(sha256, made)
            return infos[0] if infos else None

        try:
            return await self._once(("still", sha256, size, method), make)
        except Refused:
            raise
        except Exception:
            logger.exception("making a %sx%s %s thumbnail of %s failed", width, height, method, sha256)
            return None

    async def _animated(self, sha256: str, still: ThumbnailInfo) -> ThumbnailInfo:
        """The animated counterpart (same box and method) of a still thumbnail, made on first request;
        the still one if the source is not animated (or the animated one cannot be made)."""
        header = await self._header(sha256)
        if not header.animated:
            return still
        size = output_size(header.width, header.height, still.width, still.height, still.method)
        found = _find(await self.store.get(sha256), size, still.method, animated=True)
        if found is not None:
            return found

        async def make() -> ThumbnailInfo | None:
            source = await self._source(sha256)
            made = await self._run(thumbnailer.make_animated, str(source), still.width, still.height,
                                   still.method, str(self._tmp_dir()), self.config.max_image_pixels)
            if made is None:  # fewer than two frames after all: serve stills from now on
                self._remember(sha256, header._replace(animated=False))
                return None
            return (await self._adopt(sha256, [made]))[0]

        try:
            animated = await self._once(("animated", sha256, size, still.method), make)
        except Exception:
            logger.exception("making an animated %sx%s thumbnail of %s failed", size[0], size[1], sha256)
            return still
        return animated or still

    # -- files and headers ----------------------------------------------------------------------------
    def _tmp_dir(self) -> Path:
        tmp = self.hs.media_files.local.tmp_dir
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    async def _source(self, sha256: str) -> Path:
        path = await self.hs.media_files.ensure_local(content_key(sha256))
        if path is None:
            raise not_found("Not found")
        return path

    async def _header(self, sha256: str) -> Header:
        """What the file's header says (cached); raises Refused for a file not thumbnailed."""
        cached = self._headers.get(sha256)
        if cached is None:
            async def probe() -> Header:
                source = await self._source(sha256)
                return await self._run(thumbnailer.probe, str(source), self.config.max_image_pixels)

            try:
                cached = await self._once(("probe", sha256), probe)
            except Refused as refused:
                cached = refused
            except MatrixError:
                raise
            except Exception as e:  # the pool failed: not remembered, the next request tries again
                logger.exception("reading the header of %s failed", sha256)
                raise Refused("unsupported", "thumbnailing failed") from e
            self._remember(sha256, cached)
        else:
            self._headers.move_to_end(sha256)
        if isinstance(cached, Refused):
            raise cached
        return cached

    def _remember(self, sha256: str, value: Header | Refused) -> None:
        self._headers[sha256] = value
        self._headers.move_to_end(sha256)
        while len(self._headers) > HEADER_CACHE_SIZE:
            self._headers.popitem(last=False)

    async def _adopt(self, sha256: str, made: list[Made], *, remote: bool = False) -> list[ThumbnailInfo]:
        """Move the worker's temporary files into the store and record them. (Dynamic and animated
        thumbnails, made on request, go to the providers as local files do.)"""
        infos: list[ThumbnailInfo] = []
        try:
            for m in made:
                await self.hs.media_files.adopt(thumbnail_key(sha256, m.width, m.height, m.method, m.media_type),
                                                Path(m.path), remote=remote)
                info = _info(m)
                await self.store.add(sha256, info)
                infos.append(info)
        finally:
            for m in made:
                Path(m.path).unlink(missing_ok=True)
        return infos

    # -- the pool -------------------------------------------------------------------------------------
    async def _once(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        """`make()`, shared by every concurrent caller with the same key; a caller going away does not
        stop it for the others."""
        task = self._jobs.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._jobs[key] = task
            task.add_done_callback(lambda _: self._jobs.pop(key, None))
        result: T = await asyncio.shield(task)
        return result

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker process. A broken pool (a worker died) is replaced and the job tried
        once more; a job that breaks the new pool too fails."""
        async with self._slots:
            for attempt in range(2):
                pool = self._get_pool()
                try:
                    return await asyncio.wrap_future(pool.submit(fn, *args))
                except BrokenProcessPool:
                    logger.warning("a thumbnail worker process died (%s): replacing the pool",
                                   getattr(fn, "__name__", fn))
                    self._discard(pool)
                    if attempt:
                        raise
            raise AssertionError("unreachable")

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._closed:
            raise RuntimeError("thumbnails are shut down")
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_WorkerContext(),
                                             initializer=thumbnailer.init_worker)
        return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Stop the workers: queued jobs are dropped, running ones get `CLOSE_TIMEOUT_S` to finish,
        then their processes are terminated (a stop never waits on a stuck decoder)."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())  # the executor exposes no other way
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = asyncio.get_running_loop().time() + CLOSE_TIMEOUT_S
        for process in processes:
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            await asyncio.to_thread(process.join, remaining)
            if process.is_alive():
                logger.warning("a thumbnail worker did not stop in time: terminating it")
                process.terminate()
                await asyncio.to_thread(process.join, 1.0)
