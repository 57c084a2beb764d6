#!/usr/bin/env python3
"""The media repository, hs (monolith on PostgreSQL) vs Synapse (monolith on PostgreSQL), same run,
same workload (figures, not a test):

  .venv/bin/python bench/bench_media.py                        # hs and Synapse
  .venv/bin/python bench/bench_media.py --targets hs --uploads 20

Workloads, one server at a time:
  upload: N uploads (one after another) of a 12-megapixel JPEG (4000x3000, ~4 MB), each a distinct file
          (a random JPEG comment: no deduplication by content), answered -> ms, median and p90; then the
          time from the upload's start until its 800x600 and 32x32 thumbnails are served (Synapse makes
          thumbnails before it answers an upload; hs may make them after).
  download: a 50 MiB file uploaded once (MB/s), then 50 concurrent authenticated downloads of it
          (`/_matrix/client/v1/media/download`) -> aggregate MB/s and per-download seconds; every body
          is counted, the first one's SHA-256 checked.
  memory: the server process's RSS sampled every 20 ms (/proc) during each workload -> peak, and its
          child processes' (hs's thumbnail pool; Synapse has none: it thumbnails in threads) apart:
          the peak of their sum and of the largest.

Synapse is the release tests/federation/synapse.py installs (ensure_synapse, ~/.cache/hs-tests).
Servers, client and PostgreSQL share this machine's cores: the download figure is bounded by that.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_send_sync import _create_pg_database, _drop_created_databases, _wait_http, pg_dsn, pg_host  # noqa: E402

MIB = 1024 * 1024
OPEN = {"per_second": 100000, "burst_count": 100000}


# -- the files -----------------------------------------------------------------------------------

def make_photo(width: int = 4000, height: int = 3000) -> bytes:
    """A 12-megapixel JPEG that compresses like a photo (smooth areas, edges and grain): ~4 MB."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(12)
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(300):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(20, 400)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    img = img.filter(ImageFilter.GaussianBlur(3))
    noise = Image.effect_noise((width, height), 40).convert("RGB")
    img = Image.blend(img, noise, 0.25)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def distinct(jpeg: bytes, tag: bytes) -> bytes:
    """The same image with a COM segment after SOI: another file (another SHA-256), the same pixels."""
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag + jpeg[2:]


# -- memory --------------------------------------------------------------------------------------

def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids = [int(k) for k in fh.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for kid in kids:
            found += [kid, *_children(kid)]
    return found


@dataclass
class Peak:
    main_kib: int = 0
    children_sum_kib: int = 0
    largest_child_kib: int = 0
    children_seen: set[int] = field(default_factory=set)


class RssMonitor:
    """Samples the server's RSS and its children's every 20 ms into the current phase's Peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.phases: dict[str, Peak] = {}
        self.phase = "idle"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            peak = self.phases.setdefault(self.phase, Peak())
            peak.main_kib = max(peak.main_kib, _rss_kib(self.pid))
            kids = _children(self.pid)
            sizes = [_rss_kib(k) for k in kids]
            peak.children_seen.update(kids)
            peak.children_sum_kib = max(peak.children_sum_kib, sum(sizes))
            peak.largest_child_kib = max([peak.largest_child_kib, *sizes])
            self._stop.wait(0.02)


# -- servers -------------------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    base: str
    secret: str
    server_name: str
    # --profile-memory: the file that starts hs's tracemalloc snapshots.
    profile_trigger: Path | None = None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# `--profile-memory`: hs runs under tracemalloc; a thread keeps the top allocation sites of the moment
# its traced memory peaked, in hs/tracemalloc.txt of the work directory.
TRACEMALLOC_WRAPPER = r"""
import sys, threading, tracemalloc
tracemalloc.start(25)
out = sys.argv.pop(1)
NL = chr(10)

def watch():
    best = 0
    while True:
        threading.Event().wait(0.3)
        try:
            open(out + ".go").close()  # the bench says when (snapshots during start-up cost minutes)
        except FileNotFoundError:
            tracemalloc.reset_peak()
            continue
        current, _ = tracemalloc.get_traced_memory()
        if current > best * 1.05:
            best = current
            snap = tracemalloc.take_snapshot()
            lines = [f"traced {current / 2**20:.1f} MiB at its peak; top sites:"]
            lines += [str(st) for st in snap.statistics("lineno")[:15]]
            for st in snap.statistics("traceback")[:5]:
                lines += ["", f"{st.size / 2**20:.2f} MiB in {st.count} blocks:", *st.traceback.format(limit=10)]
            with open(out, "w") as fh:
                fh.write(NL.join(lines) + NL)

threading.Thread(target=watch, daemon=True).start()
from hs.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_hs(workdir: Path, extra: dict[str, Any], env: dict[str, str], profile: bool) -> Server:
    d = workdir / "hs"
    d.mkdir(parents=True, exist_ok=True)
    cfg_path = d / "homeserver.yaml"
    subprocess.run([sys.executable, "-m", "hs.cli", "generate-config", "--server-name", "bench.local",
                    "--config-path", str(cfg_path), "--data-dir", str(d), "--force"], check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    cfg = yaml.safe_load(cfg_path.read_text())
    port = _free_port()
    cfg["listeners"] = [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http",
                         "resources": ["client", "federation"]}]
    cfg["database"] = {"engine": "postgres", "dsn": pg_dsn(_create_pg_database("hs_bench_media_"))}
    cfg["max_upload_size"] = "100M"
    cfg["bcrypt_rounds"] = 4
    for key in ("rc_message", "rc_registration"):
        cfg[key] = OPEN
    cfg["rc_login"] = {"address": OPEN, "account": OPEN, "failed_attempts": OPEN}
    cfg.update(extra)
    cfg_path.write_text(yaml.safe_dump(cfg))
    log = open(d / "hs.log", "ab")
    cmd = [sys.executable, "-m", "hs.cli", "run", "--config", str(cfg_path)]
    if profile:
        cmd = [sys.executable, "-c", TRACEMALLOC_WRAPPER, str(d / "tracemalloc.txt"), "run", "--config", str(cfg_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base, 300 if profile else 60)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Server("hs", proc, base, cfg["registration_shared_secret"], "bench.local",
                  d / "tracemalloc.txt.go" if profile else None)


def start_synapse(workdir: Path) -> Server:
    from tests.federation.synapse import ensure_synapse

    py = ensure_synapse()
    d = workdir / "synapse"
    d.mkdir(parents=True, exist_ok=True)
    cfg_path = d / "homeserver.yaml"
    subprocess.run([str(py), "-m", "synapse.app.homeserver", "--server-name", "bench.local", "--config-path",
                    str(cfg_path), "--generate-config", "--report-stats=no", "--data-directory", str(d)],
                   check=True, stdout=subprocess.DEVNULL, cwd=d)
    conf = yaml.safe_load(cfg_path.read_text())
    port = _free_port()
    conf["listeners"] = [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                          "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]}]
    conf["database"] = {"name": "psycopg2", "args": {"user": "postgres", "host": pg_host(),
                                                     "database": _create_pg_database("synapse_bench_media_"),
                                                     "cp_min": 5, "cp_max": 10}}
    conf["max_upload_size"] = "100M"
    secret = uuid.uuid4().hex
    conf["registration_shared_secret"] = secret
    for key in ("rc_message", "rc_registration", "rc_media_create"):
        conf[key] = dict(OPEN)
    conf["rc_login"] = {"address": OPEN, "account": OPEN, "failed_attempts": OPEN}
    conf.update({"trusted_key_servers": [], "suppress_key_server_warning": True, "enable_metrics": False,
                 "bcrypt_rounds": 4, "presence": {"enabled": False}})
    cfg_path.write_text(yaml.safe_dump(conf))
    env = {**os.environ, "SYNAPSE_ASYNC_IO_REACTOR": "0"}
    env.pop("PYTHONPATH", None)
    log = open(d / "stdout.log", "ab")
    proc = subprocess.Popen([str(py), "-m", "synapse.app.homeserver", "-c", str(cfg_path)], cwd=d, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    _wait_http(base, 180)
    return Server("synapse", proc, base, secret, "bench.local")


# -- workloads -----------------------------------------------------------------------------------

async def register(s: aiohttp.ClientSession, server: Server) -> dict[str, str]:
    import hmac

    url = server.base + "/_synapse/admin/v1/register"
    async with s.get(url) as r:
        nonce = (await r.json())["nonce"]
    name = "bench" + uuid.uuid4().hex[:8]
    mac = hmac.new(server.secret.encode(), b"\x00".join(x.encode() for x in (nonce, name, "benchpass1", "notadmin")),
                   hashlib.sha1).hexdigest()
    async with s.post(url, json={"nonce": nonce, "username": name, "password": "benchpass1", "admin": False,
                                 "mac": mac}) as r:
        data = await r.json()
        assert r.status == 200, data
    return {"Authorization": f"Bearer {data['access_token']}"}


async def upload(s: aiohttp.ClientSession, server: Server, auth: dict[str, str], body: bytes, ctype: str,
                 name: str) -> str:
    async with s.post(server.base + "/_matrix/media/v3/upload", data=body, params={"filename": name},
                      headers={**auth, "Content-Type": ctype}) as r:
        data = await r.json(content_type=None)
        assert r.status == 200, (r.status, data)
    return str(data["content_uri"])


async def thumbnail_served(s: aiohttp.ClientSession, server: Server, auth: dict[str, str], mxc: str,
                           width: int, height: int, method: str, deadline: float) -> bool:
    """Whether the thumbnail is served (an image, not the original) before `deadline`."""
    path = "/_matrix/client/v1/media/thumbnail/" + mxc.removeprefix("mxc://")
    params = {"width": str(width), "height": str(height), "method": method}
    while time.monotonic() < deadline:
        async with s.get(server.base + path, params=params, headers=auth) as r:
            body = await r.read()
            if r.status == 200 and r.headers.get("Content-Type", "").startswith("image/") and len(body) < 1_000_000:
                return True
        await asyncio.sleep(0.01)
    return False


async def bench_upload(s: aiohttp.ClientSession, server: Server, auth: dict[str, str], photo: bytes,
                       n: int) -> dict[str, Any]:
    upload_ms, thumbs_ms, missing = [], [], 0
    for i in range(n):
        body = distinct(photo, f"bench {server.name} {i} {uuid.uuid4().hex}".encode())
        began = time.monotonic()
        mxc = await upload(s, server, auth, body, "image/jpeg", "photo.jpg")
        upload_ms.append((time.monotonic() - began) * 1000)
        ok = all([await thumbnail_served(s, server, auth, mxc, 800, 600, "scale", began + 30),
                  await thumbnail_served(s, server, auth, mxc, 32, 32, "crop", began + 30)])
        if ok:
            thumbs_ms.append((time.monotonic() - began) * 1000)
        else:
            missing += 1
    return {"n": n, "bytes": len(photo), "upload_ms_median": statistics.median(upload_ms),
            "upload_ms_p90": sorted(upload_ms)[int(0.9 * (n - 1))], "upload_ms_min": min(upload_ms),
            "thumbs_ms_median": statistics.median(thumbs_ms) if thumbs_ms else None, "thumbs_missing": missing}


async def bench_download(s: aiohttp.ClientSession, server: Server, auth: dict[str, str], big: bytes,
                         concurrency: int, monitor: RssMonitor) -> dict[str, Any]:
    monitor.phase = "big upload"
    began = time.monotonic()
    mxc = await upload(s, server, auth, big, "application/octet-stream", "big.bin")
    upload_s = time.monotonic() - began
    url = server.base + "/_matrix/client/v1/media/download/" + mxc.removeprefix("mxc://")
    want = hashlib.sha256(big).hexdigest()
    async with s.get(url, headers=auth) as r:
        assert r.status == 200, r.status
        digest = hashlib.sha256()
        async for chunk in r.content.iter_chunked(MIB):
            digest.update(chunk)
    assert digest.hexdigest() == want, "the downloaded file differs"

    async def one() -> tuple[int, float]:
        t0 = time.monotonic()
        got = 0
        async with s.get(url, headers=auth) as r:
            assert r.status == 200, r.status
            async for chunk in r.content.iter_chunked(MIB):
                got += len(chunk)
        return got, time.monotonic() - t0

    monitor.phase = "download"
    if server.profile_trigger is not None:
        server.profile_trigger.touch()
    began = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(concurrency)))
    elapsed = time.monotonic() - began
    total = sum(got for got, _ in results)
    assert all(got == len(big) for got, _ in results), "a download was cut short"
    each = sorted(t for _, t in results)
    return {"upload_mb_s": len(big) / MIB / upload_s, "concurrency": concurrency, "seconds": elapsed,
            "mb_s": total / MIB / elapsed, "each_s_median": statistics.median(each), "each_s_max": each[-1]}


async def run_target(server: Server, monitor: RssMonitor, photo: bytes, big: bytes, uploads: int,
                     concurrency: int) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as s:
        auth = await register(s, server)
        await asyncio.sleep(1)
        monitor.phase = "upload"
        up = await bench_upload(s, server, auth, photo, uploads)
        monitor.phase = "between"
        await asyncio.sleep(1)
        down = await bench_download(s, server, auth, big, concurrency, monitor)
        monitor.phase = "after"
        return {"upload": up, "download": down}


def _mb(kib: int) -> str:
    return f"{kib / 1024:.0f} MB"


def report(name: str, result: dict[str, Any], monitor: RssMonitor) -> None:
    up, down = result["upload"], result["download"]
    thumbs = f"{up['thumbs_ms_median']:.0f} ms" if up["thumbs_ms_median"] is not None else "not served"
    print(f"\n== {name}")
    print(f"  upload 12 MP JPEG ({up['bytes'] / 1e6:.1f} MB) x{up['n']}: median {up['upload_ms_median']:.0f} ms, "
          f"p90 {up['upload_ms_p90']:.0f} ms, min {up['upload_ms_min']:.0f} ms; "
          f"until 800x600 + 32x32 thumbnails served: median {thumbs} ({up['thumbs_missing']} without)")
    print(f"  50 MiB upload: {down['upload_mb_s']:.0f} MB/s; {down['concurrency']} concurrent downloads: "
          f"{down['mb_s']:.0f} MB/s aggregate in {down['seconds']:.1f} s (each median {down['each_s_median']:.1f} s, "
          f"max {down['each_s_max']:.1f} s)")
    for phase in ("idle", "upload", "big upload", "download"):
        p = monitor.phases.get(phase, Peak())
        print(f"  peak RSS during {phase}: process {_mb(p.main_kib)}; children: {len(p.children_seen)} seen, "
              f"sum {_mb(p.children_sum_kib)}, largest {_mb(p.largest_child_kib)}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="hs,synapse")
    ap.add_argument("--uploads", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--size-mib", type=int, default=50)
    ap.add_argument("--hs-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for hs (e.g. MALLOC_ARENA_MAX=2), repeatable")
    ap.add_argument("--profile-memory", action="store_true",
                    help="hs under tracemalloc: the top allocation sites at its peak (slower)")
    args = ap.parse_args()
    hs_env = dict(item.split("=", 1) for item in args.hs_env)

    photo = make_photo()
    big = os.urandom(args.size_mib * MIB)
    commit = subprocess.run(["git", "log", "-1", "--format=%h"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"hs at {commit}; 12 MP JPEG: {len(photo) / 1e6:.1f} MB; big file {args.size_mib} MiB; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    workdir = Path(tempfile.mkdtemp(prefix="hs-bench-media-"))
    try:
        for target in args.targets.split(","):
            server = start_hs(workdir, {}, hs_env, args.profile_memory) if target == "hs" else start_synapse(workdir)
            monitor = RssMonitor(server.proc.pid)
            monitor.start()
            try:
                result = asyncio.run(run_target(server, monitor, photo, big, args.uploads, args.concurrency))
            finally:
                monitor.stop()
                server.proc.terminate()
                try:
                    server.proc.wait(15)
                except subprocess.TimeoutExpired:
                    server.proc.kill()
                    server.proc.wait()
            report(target, result, monitor)
            print(f"  (load average after it: {os.getloadavg()[0]:.1f})")
    finally:
        _drop_created_databases()
    print(f"\nlogs and stores in {workdir}")
    if args.profile_memory and (workdir / "hs" / "tracemalloc.txt").exists():
        print((workdir / "hs" / "tracemalloc.txt").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
