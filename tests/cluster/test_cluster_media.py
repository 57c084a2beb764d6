"""The media repository on two `media_repository` workers sharing `media_store_path`, behind nginx
configured by `hs routes`, with `enable_media_repo: false` on main (real processes, PostgreSQL, Redis).

Uploads and downloads through nginx; both workers serve every file; main answers media paths with 404;
nginx's body limit and hs's; an asynchronous upload created on one worker, uploaded on the other, and
awaited by a download on the first; and a media worker killed with SIGKILL while uploads and downloads
run through nginx (the share of failed requests and the latency are measured and bounded).

These tests share a cluster of their own (the module's fixture). The kill comes last."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hs.localcluster import LocalCluster, free_port
from hs.roles.duties import MEDIA_BACKGROUND, duties_for
from tests.cluster.conftest import instance_url, running_cluster
from tests.harness import Client

pytestmark = pytest.mark.timeout(300)

MEDIA_WORKERS = ("media1", "media2")
MAX_UPLOAD = 2 * 1024 * 1024
# The kill: how long traffic runs before and after it, and how many requests run at once.
BEFORE_KILL_S, AFTER_KILL_S, CONCURRENCY = 1.5, 3.0, 4


def _add_media_workers(cfg: dict[str, Any], store: Path) -> None:
    cfg["enable_media_repo"] = False
    cfg["media_store_path"] = str(store)
    cfg["max_upload_size"] = MAX_UPLOAD
    cfg["media_instance_running_background_jobs"] = MEDIA_WORKERS[0]
    for name in MEDIA_WORKERS:
        repl = free_port()
        cfg["instance_map"][name] = {"host": "127.0.0.1", "port": repl}
        cfg["workers"][name] = {"app": "media_repository", "listeners": [
            {"port": free_port(), "resources": ["media"]}, {"port": repl, "resources": ["replication"]},
            {"port": free_port(), "type": "metrics"}]}


@pytest.fixture(scope="module")
def media_cluster(pg_base_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    workdir = tmp_path_factory.mktemp("media-cluster")
    store = workdir / "media_store"
    with running_cluster(pg_base_dsn, redis_url, workdir, lambda cfg: _add_media_workers(cfg, store)) as c:
        yield c


class Media:
    """A registered user's media calls against one base URL (nginx or an instance)."""

    def __init__(self, session: aiohttp.ClientSession, token: str) -> None:
        self.session, self.headers = session, {"Authorization": f"Bearer {token}"}

    async def upload(self, base: str, body: bytes, content_type: str = "application/octet-stream"
                     ) -> tuple[int, dict[str, Any]]:
        async with self.session.post(f"{base}/_matrix/media/v3/upload", data=body, params={"filename": "f.bin"},
                                     headers={**self.headers, "Content-Type": content_type}) as resp:
            return resp.status, await resp.json(content_type=None)

    async def download(self, base: str, mxc: str, **params: str) -> tuple[int, bytes]:
        server, media_id = mxc.removeprefix("mxc://").split("/")
        async with self.session.get(f"{base}/_matrix/client/v1/media/download/{server}/{media_id}",
                                    params=params or None, headers=self.headers) as resp:
            return resp.status, await resp.read()


async def _media_user(cluster: LocalCluster, session: aiohttp.ClientSession) -> Media:
    c = Client(cluster.base_url)
    try:
        await c.register("media" + uuid.uuid4().hex[:8])
    finally:
        await c.close()
    assert c.token
    return Media(session, c.token)


def test_upload_and_download_through_nginx_and_from_each_worker(media_cluster: LocalCluster) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            m = await _media_user(media_cluster, session)
            body = os.urandom(300_000)
            status, data = await m.upload(media_cluster.base_url, body)
            assert status == 200, data
            mxc = data["content_uri"]
            assert mxc.startswith("mxc://cluster.test/")
            assert await m.download(media_cluster.base_url, mxc) == (200, body)
            for name in MEDIA_WORKERS:  # the shared store: either worker serves it
                assert await m.download(instance_url(media_cluster, name, "media"), mxc) == (200, body), name
            # Main runs no media repository: its client listener does not know these paths.
            main = instance_url(media_cluster, "main")
            for method, path in (("GET", "/_matrix/client/v1/media/config"),
                                 ("GET", "/_matrix/client/v1/media/download/" + mxc.removeprefix("mxc://")),
                                 ("POST", "/_matrix/media/v3/upload")):
                async with session.request(method, main + path, headers=m.headers) as resp:
                    assert resp.status == 404, (path, resp.status)
                    assert (await resp.json())["errcode"] == "M_UNRECOGNIZED"
    asyncio.run(run())


def test_upload_limits_through_nginx(media_cluster: LocalCluster) -> None:
    """Just over max_upload_size: hs refuses it (nginx lets it through: headroom); far over: nginx
    refuses it, also as JSON M_TOO_LARGE."""
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            m = await _media_user(media_cluster, session)
            status, data = await m.upload(media_cluster.base_url, os.urandom(MAX_UPLOAD))
            assert status == 200, data
            for size in (MAX_UPLOAD + 100_000, 2 * MAX_UPLOAD):
                status, data = await m.upload(media_cluster.base_url, os.urandom(size))
                assert status == 413 and data["errcode"] == "M_TOO_LARGE", (size, status, data)
    asyncio.run(run())


def test_async_upload_created_on_one_worker_uploaded_on_the_other(media_cluster: LocalCluster) -> None:
    """A download waiting on media1 gets a file uploaded to media2 (the repository polls the database)."""
    media1, media2 = (instance_url(media_cluster, n, "media") for n in MEDIA_WORKERS)

    async def run() -> float:
        async with aiohttp.ClientSession() as session:
            m = await _media_user(media_cluster, session)
            async with session.post(f"{media1}/_matrix/media/v1/create", headers=m.headers) as resp:
                assert resp.status == 200
                mxc = (await resp.json())["content_uri"]
            waiting = asyncio.ensure_future(m.download(media1, mxc, timeout_ms="15000"))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            body = os.urandom(50_000)
            async with session.put(f"{media2}/_matrix/media/v3/upload/{mxc.removeprefix('mxc://')}", data=body,
                                   headers={**m.headers, "Content-Type": "application/octet-stream"}) as resp:
                assert resp.status == 200, await resp.text()
            uploaded = time.monotonic()
            assert await waiting == (200, body)
            return time.monotonic() - uploaded
    lag = asyncio.run(run())
    print(f"async upload: the waiting download on the other worker answered {lag * 1000:.0f} ms after the upload")
    assert lag < 2.0  # the poll runs every 0.5 s


def test_the_background_jobs_duty_is_on_the_named_worker_only(media_cluster: LocalCluster) -> None:
    holders = [name for name in media_cluster.instances if MEDIA_BACKGROUND in duties_for(media_cluster.config, name)]
    assert holders == [MEDIA_WORKERS[0]]


async def _media_requests_served(session: aiohttp.ClientSession, cluster: LocalCluster, name: str) -> int:
    """Uploads and downloads `name` has answered, from its metrics listener."""
    async with session.get(instance_url(cluster, name, "metrics") + "/metrics") as resp:
        text = await resp.text()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("hs_http_requests_total{") and ("upload" in line or "download" in line))


class Load:
    """CONCURRENCY loops through nginx, each alternating an upload and a download of a known file
    (several files: downloads are hashed by media ID, so they meet both workers), recording
    (start, seconds, ok, kind) per request."""

    def __init__(self, base: str, m: Media, files: list[tuple[str, bytes]]) -> None:
        self.base, self.m, self.files = base, m, files
        self.results: list[tuple[float, float, bool, str]] = []
        self.stop = asyncio.Event()

    async def _loop(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            kind = "upload" if (n + i) % 2 else "download"
            began = time.monotonic()
            try:
                mxc, body = self.files[(n + i) % len(self.files)]
                if kind == "upload":
                    status, _ = await self.m.upload(self.base, body[: 100_000 + n])
                    good = status == 200
                else:
                    status, got = await self.m.download(self.base, mxc)
                    good = status == 200 and got == body
            except aiohttp.ClientError:
                good = False
            self.results.append((began, time.monotonic() - began, good, kind))

    async def run(self, until: asyncio.Event) -> None:
        tasks = [asyncio.ensure_future(self._loop(i)) for i in range(CONCURRENCY)]
        await until.wait()
        self.stop.set()
        await asyncio.gather(*tasks)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def test_kill_9_of_a_media_worker_while_uploads_and_downloads_run(media_cluster: LocalCluster) -> None:
    async def run() -> tuple[Load, float]:
        async with aiohttp.ClientSession() as session:
            m = await _media_user(media_cluster, session)
            files = []
            for _ in range(8):
                body = os.urandom(1_000_000)
                status, data = await m.upload(media_cluster.base_url, body)
                assert status == 200, data
                files.append((data["content_uri"], body))
            load = Load(media_cluster.base_url, m, files)
            served = await _media_requests_served(session, media_cluster, MEDIA_WORKERS[1])
            done = asyncio.Event()
            runner = asyncio.ensure_future(load.run(done))
            await asyncio.sleep(BEFORE_KILL_S)
            # The worker about to die has been taking its share (else the kill would prove nothing).
            assert await _media_requests_served(session, media_cluster, MEDIA_WORKERS[1]) - served > 20
            killed_at = time.monotonic()
            await asyncio.to_thread(media_cluster.kill_instance, MEDIA_WORKERS[1])
            await asyncio.sleep(AFTER_KILL_S)
            done.set()
            await runner
            return load, killed_at

    try:
        load, killed_at = asyncio.run(run())
    finally:
        media_cluster.start_instance(MEDIA_WORKERS[1])
    before = [r for r in load.results if r[0] + r[1] < killed_at]
    after = [r for r in load.results if r[0] > killed_at]
    around = [r for r in load.results if r[0] <= killed_at <= r[0] + r[1]]
    failed = [r for r in load.results if not r[2]]
    share = len(failed) / len(load.results)
    report = (f"kill -9 of {MEDIA_WORKERS[1]} under {CONCURRENCY} concurrent upload/download loops through nginx: "
              f"{len(load.results)} requests, {len(failed)} failed ({share:.1%}; in flight at the kill: "
              f"{len(around)}, of them failed {sum(not r[2] for r in around)}); latency before p50 "
              f"{_p([r[1] for r in before], 0.5) * 1000:.0f} ms max {_p([r[1] for r in before], 1) * 1000:.0f} ms, "
              f"after p50 {_p([r[1] for r in after], 0.5) * 1000:.0f} ms max "
              f"{_p([r[1] for r in after], 1) * 1000:.0f} ms")
    print(report)
    assert len(before) >= 4 and len(after) >= 10, report
    # Only requests in flight on the killed worker may fail; afterwards nginx skips it.
    assert all(r[2] for r in before + after), report
    assert len(failed) <= CONCURRENCY, report
    assert _p([r[1] for r in after], 1) < 2.0, report
