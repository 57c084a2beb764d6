"""The media repository's background jobs, run by the instance named in
`media_instance_running_background_jobs` (main by default): one round every `interval_s` (10 minutes)
that

1. deletes reserved media IDs (POST /_matrix/media/v1/create) whose upload never came in time;
2. applies `media_retention`: local media not accessed for `local_media_lifetime`, and cached remote
   media not accessed for `remote_media_lifetime`, is deleted. As in Synapse, quarantined and
   protected local media stays, and so does local media in use as a user's or room's avatar;
   quarantined remote copies stay too (their rows keep the media blocked);
3. deletes files of the local store that no row names (content and thumbnails left behind by a crash
   between a file and its row, or by an interrupted deletion), a slice of the store per round, and
   temporary files abandoned by interrupted uploads. A file younger than ORPHAN_GRACE_S is left
   alone: an upload writes its file before its row.

Each step works in bounded batches, so a round never holds much in memory and a big backlog is
worked off over several rounds. An error is logged and the round goes on with the next step; what
failed is tried again next round. `stop` cancels the loop at its next await.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hs.db.stores.media import MediaStore
from hs.media.admin import MediaAdmin
from hs.util import now_ms

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

INTERVAL_S = 600.0
# The first round waits this long after start, so it does not compete with the start-up's own work.
FIRST_ROUND_DELAY_S = 30.0
# Retention batches (of hs.media.admin.BATCH rows) per kind per round.
RETENTION_BATCHES = 20
# Files younger than this are never orphans yet: their row may be on its way.
ORPHAN_GRACE_S = 3600.0
# Abandoned temporary files go after a day (the longest upload is far shorter).
TEMP_MAX_AGE_S = 86_400.0
# Of the 256 first-level folders of `content/` and `thumbnails/`, how many one round looks through
# (the whole store every 256 / 16 rounds: under 3 hours at the default interval).
ORPHAN_FOLDERS_PER_ROUND = 16
ORPHAN_HASH_BATCH = 500


class MediaBackgroundJobs:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.admin = MediaAdmin(hs)
        self.store = MediaStore(hs.db, hs.server_name)
        self.interval_s = INTERVAL_S
        self.first_delay_s = FIRST_ROUND_DELAY_S
        self.retention_batches = RETENTION_BATCHES
        self.orphan_grace_s = ORPHAN_GRACE_S
        self.orphan_folders_per_round = ORPHAN_FOLDERS_PER_ROUND
        self._next_folder = 0
        self._task: asyncio.Task[None] | None = None
        self._round_lock = asyncio.Lock()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="media-background")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        await asyncio.sleep(self.first_delay_s)
        while True:
            try:
                await self.run_once()
            except Exception:  # each step logs its own; this is a bug in the loop itself
                logger.exception("media background round failed")
            await asyncio.sleep(self.interval_s)

    async def run_once(self) -> dict[str, int]:
        """One round of every job (rounds never overlap); what each step removed."""
        async with self._round_lock:
            done: dict[str, int] = {}
            for name, step in (("reservations", self.delete_expired_reservations),
                               ("local_retention", self.apply_local_retention),
                               ("remote_retention", self.apply_remote_retention),
                               ("orphans", self.delete_orphan_files)):
                try:
                    done[name] = await step()
                except Exception:
                    logger.exception("media background job %s failed; it runs again next round", name)
                    done[name] = 0
            if any(done.values()):
                logger.info("media background round: %s", done)
            return done

    async def delete_expired_reservations(self) -> int:
        return await self.store.delete_expired_reservations(now_ms())

    async def apply_local_retention(self) -> int:
        lifetime = self.hs.config.media_retention.local_media_lifetime
        if lifetime is None:
            return 0
        deleted = await self.admin.delete_old_local_media(
            now_ms() - lifetime, 0, keep_profiles=True, include_quarantined=False, include_protected=False,
            max_batches=self.retention_batches)
        return len(deleted)

    async def apply_remote_retention(self) -> int:
        lifetime = self.hs.config.media_retention.remote_media_lifetime
        if lifetime is None:
            return 0
        return await self.admin.delete_old_remote_media(now_ms() - lifetime, max_batches=self.retention_batches)

    # -- files no row names ------------------------------------------------------------------------------
    async def delete_orphan_files(self, folders: int | None = None) -> int:
        """Look through the next `folders` (default `orphan_folders_per_round`) first-level folders of
        the local store's content and thumbnails, and delete the files of hashes no row names; also
        drop stale temporary files. How many files (content or thumbnail folders) went."""
        count = folders if folders is not None else self.orphan_folders_per_round
        local = self.hs.media_files.local
        prefixes = [f"{(self._next_folder + i) % 256:02x}" for i in range(min(count, 256))]
        self._next_folder = (self._next_folder + count) % 256
        cutoff = time.time() - self.orphan_grace_s
        candidates = await asyncio.to_thread(_old_hashes, local.root, prefixes, cutoff)
        removed = 0
        for i in range(0, len(candidates), ORPHAN_HASH_BATCH):
            batch = candidates[i:i + ORPHAN_HASH_BATCH]
            used = await self.admin.store.hashes_in_use(batch)
            for sha256 in batch:
                if sha256 not in used:
                    await self.admin.delete_file(sha256)
                    removed += 1
        removed += await asyncio.to_thread(_drop_stale_temps, local.tmp_dir, time.time() - TEMP_MAX_AGE_S)
        return removed


def _old_hashes(root: Path, prefixes: list[str], cutoff: float) -> list[str]:
    """Hashes with a content file or a thumbnail folder under `prefixes`, untouched since `cutoff`."""
    found: set[str] = set()
    for kind in ("content", "thumbnails"):
        for prefix in prefixes:
            top = root / kind / prefix
            if not top.is_dir():
                continue
            for second in os.scandir(top):
                if not second.is_dir():
                    continue
                for entry in os.scandir(second.path):
                    try:
                        if entry.stat().st_mtime < cutoff and len(entry.name) == 64:
                            found.add(entry.name)
                    except FileNotFoundError:
                        continue
    return sorted(found)


def _drop_stale_temps(tmp_dir: Path, cutoff: float) -> int:
    if not tmp_dir.is_dir():
        return 0
    removed = 0
    for entry in os.scandir(tmp_dir):
        try:
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed
