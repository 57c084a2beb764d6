"""The media background jobs (hs/media/background.py), driven a round at a time: `media_retention`
deletes local and cached remote media not accessed for its lifetimes and keeps what was accessed
since, what is protected or quarantined, and avatars; lapsed reservations go; files no row names go
once old enough, and stale temporary files; a failing step does not stop the others; the loop runs
on its own and stops at once."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from hs.media.background import MediaBackgroundJobs
from tests.harness import TestHomeServer, ok, user
from tests.integration.test_media_admin import (
    add_remote,
    content_file,
    download_status,
    sha_of,
    store_root,
    upload,
)

DAY_MS = 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
async def server(make_server: Any, engine: str) -> TestHomeServer:
    srv: TestHomeServer = await make_server(engine, media_retention={"local_media_lifetime": "1d",
                                                                      "remote_media_lifetime": "2d"})
    return srv


def jobs(server: TestHomeServer) -> MediaBackgroundJobs:
    return server.hs.media_background


async def age(server: TestHomeServer, media_id: str, days: float) -> None:
    await server.hs.db.execute("UPDATE local_media SET last_access_ts = $2 WHERE media_id = $1", media_id,
                               now_ms() - int(days * DAY_MS))


async def exists(server: TestHomeServer, media_id: str) -> bool:
    return bool(await server.hs.db.fetchval("SELECT COUNT(*) FROM local_media WHERE media_id = $1", media_id) == 1)


async def test_local_retention(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    name = server.config.server_name
    stale = await upload(server, alice, b"stale")
    stale_shared = await upload(server, alice, b"shared")
    fresh_shared = await upload(server, alice, b"shared")
    accessed = await upload(server, alice, b"accessed")
    protected = await upload(server, alice, b"protected")
    quarantined = await upload(server, alice, b"quarantined")
    avatar = await upload(server, alice, b"avatar")
    await ok(alice, "PUT", f"/profile/{quote(alice.user_id or '')}/avatar_url", {"avatar_url": f"mxc://{name}/{avatar}"})
    for media_id in (stale, stale_shared, accessed, protected, quarantined, avatar):
        await age(server, media_id, 3)
    await age(server, fresh_shared, 0.5)
    await server.hs.db.execute("UPDATE local_media SET safe_from_quarantine = 1 WHERE media_id = $1", protected)
    await server.hs.db.execute("UPDATE local_media SET quarantined_by = '@mod:x' WHERE media_id = $1", quarantined)
    stale_sha, shared_sha = await sha_of(server, stale), await sha_of(server, stale_shared)
    # Downloaded now: its last access is now, so it stays.
    server.hs.media._touched.clear()
    assert await download_status(server, alice, accessed) == 200

    done = await jobs(server).run_once()
    assert done["local_retention"] == 2
    assert not await exists(server, stale) and not await exists(server, stale_shared)
    for media_id in (fresh_shared, accessed, protected, quarantined, avatar):
        assert await exists(server, media_id), media_id
    assert not content_file(server, stale_sha).exists()
    assert content_file(server, shared_sha).exists()  # another row still names the bytes
    assert await download_status(server, alice, fresh_shared) == 200
    assert (await jobs(server).run_once())["local_retention"] == 0


async def test_remote_retention_and_reservations(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    old_sha = await add_remote(server, "remote.example", "old", b"old remote", now_ms() - 3 * DAY_MS)
    young_sha = await add_remote(server, "remote.example", "young", b"young remote", now_ms() - DAY_MS)
    await add_remote(server, "remote.example", "blocked", b"blocked remote", now_ms() - 3 * DAY_MS,
                     quarantined_by="@mod:x")

    async with aiohttp.ClientSession() as session:
        uris = []
        for _ in range(2):
            async with session.post(server.base_url + "/_matrix/media/v1/create",
                                    headers={"Authorization": f"Bearer {alice.token}"}) as resp:
                assert resp.status == 200
                uris.append(orjson.loads(await resp.read())["content_uri"])
    lapsed, waiting = (u.rpartition("/")[2] for u in uris)
    await server.hs.db.execute("UPDATE local_media SET unused_expires_ts = $2 WHERE media_id = $1", lapsed,
                               now_ms() - 1)

    done = await jobs(server).run_once()
    assert done["remote_retention"] == 1 and done["reservations"] == 1
    rows = await server.hs.db.fetch("SELECT media_id FROM remote_media_cache ORDER BY media_id")
    assert [r["media_id"] for r in rows] == ["blocked", "young"]
    assert not content_file(server, old_sha).exists() and content_file(server, young_sha).exists()
    assert not await exists(server, lapsed) and await exists(server, waiting)


async def test_orphan_files_and_stale_temps(make_server: Any) -> None:
    server = await make_server("sqlite")  # files only: one engine is enough
    alice = await user(server, "alice")
    kept = await upload(server, alice, b"has a row")
    kept_sha = await sha_of(server, kept)
    root = store_root(server)
    old = time.time() - 2 * 86_400

    def orphan(sha: str, mtime: float) -> Path:
        path = content_file(server, sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"orphan")
        os.utime(path, (mtime, mtime))
        return path

    old_orphan = orphan("ab" * 32, old)
    young_orphan = orphan("cd" * 32, time.time())
    thumb_dir = root / "thumbnails" / "ab" / "ab" / ("ab" * 32)
    thumb_dir.mkdir(parents=True)
    (thumb_dir / "32-32-crop.png").write_bytes(b"t")
    os.utime(content_file(server, kept_sha), (old, old))
    stale_temp = root / "tmp" / "stale"
    stale_temp.parent.mkdir(exist_ok=True)
    stale_temp.write_bytes(b"half an upload")
    os.utime(stale_temp, (old, old))
    fresh_temp = root / "tmp" / "fresh"
    fresh_temp.write_bytes(b"an upload going on")

    removed = await jobs(server).delete_orphan_files(folders=256)
    assert removed == 2  # the old orphan (with its thumbnails) and the stale temporary file
    assert not old_orphan.exists() and not thumb_dir.exists() and not stale_temp.exists()
    assert young_orphan.exists() and fresh_temp.exists() and content_file(server, kept_sha).exists()
    assert await download_status(server, alice, kept) == 200


async def test_failing_step_does_not_stop_the_round(make_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = await make_server("sqlite", media_retention={"remote_media_lifetime": "1d"})
    job = jobs(server)
    await add_remote(server, "remote.example", "old", b"old remote", now_ms() - 3 * DAY_MS)

    async def broken() -> int:
        raise RuntimeError("database went away")

    job.delete_expired_reservations = broken  # type: ignore[method-assign]
    done = await job.run_once()
    assert done["reservations"] == 0 and done["remote_retention"] == 1 and done["local_retention"] == 0
    assert "media background job reservations failed" in caplog.text


async def test_loop_runs_and_stops_quickly(make_server: Any) -> None:
    server = await make_server("sqlite", media_retention={"remote_media_lifetime": "1d"})
    job = MediaBackgroundJobs(server.hs)
    job.first_delay_s, job.interval_s = 0.0, 0.05
    await add_remote(server, "remote.example", "old", b"old remote", now_ms() - 3 * DAY_MS)
    await job.start()
    try:
        for _ in range(200):
            if not await server.hs.db.fetchval("SELECT COUNT(*) FROM remote_media_cache"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the loop never applied retention")
    finally:
        started = time.monotonic()
        await job.stop()
    assert time.monotonic() - started < 1.0
    assert job._task is None
