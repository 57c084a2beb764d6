#!/usr/bin/env python3
"""Sliding sync (MSC4186), hs (monolith on PostgreSQL) vs Synapse (monolith on PostgreSQL), same run,
same workload (figures, not a test):

  .venv/bin/python bench/bench_sliding_sync.py                       # hs and Synapse
  .venv/bin/python bench/bench_sliding_sync.py --targets hs --rooms 200 --connections 10

Set-up, per server: a reader and a writer user; the writer creates --rooms rooms (public; two thirds
named, one in five with m.room.encryption in its initial state), the reader joins each, and
--messages messages are sent into each, alternately by both (all through the client API, rate limits
off, --concurrency rooms at a time). The reader is then in --rooms rooms of two members.

Workloads:
  first: the first response of a fresh connection (a new conn_id, no pos) for the top 20 rooms as
         Element X asks for them: one list, ranges [[0,19]], timeline_limit 1, required_state
         m.room.name, m.room.avatar, m.room.encryption and m.room.member $LAZY, timeout 0 ->
         ms from the request's start to the whole body read, median and p90 over --connections
         connections (the first, colder one shown apart). The answer is checked: 20 rooms, count =
         --rooms. Synapse serves the unstable path only; hs is measured on both. Both servers run
         during the whole measurement and take turns (one connection on each, then the next), so
         they see the same load from whatever else runs on the machine.
  wake:  the reader long-polls sliding sync (the same list, a pos, timeout 30 s); the writer PUTs a
         message into one of its rooms; time from the PUT's start until the long-poll has returned
         with it -> median and p90 over --trials trials; the same for /sync (same client, same
         reader, same rooms), the kinds taking turns trial by trial so that their ratio does not
         depend on when the machine's load moved.

Targets (issue 15): hs's first response <= 1/10 of Synapse's; hs's sliding sync wake-up <= 2x its /sync
wake-up. Servers, client and PostgreSQL share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_send_sync import (  # noqa: E402
    User,
    _create_pg_database,
    _drop_created_databases,
    _wait_http,
    pct,
    pg_dsn,
    pg_host,
    register,
)

UNSTABLE_PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
V4_PATH = "/_matrix/client/v4/sync"
OPEN = {"per_second": 100000, "burst_count": 100000}
TOP = (0, 19)
REQUIRED_STATE = [["m.room.name", ""], ["m.room.avatar", ""], ["m.room.encryption", ""], ["m.room.member", "$LAZY"]]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- servers -------------------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    base: str
    secret: str
    workdir: Path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_hs(workdir: Path, env: dict[str, str], wrapper: list[str]) -> Server:
    """hs on PostgreSQL (a fresh database), rate limits off; `wrapper` runs it under a profiler."""
    d = workdir / "hs"
    d.mkdir(parents=True, exist_ok=True)
    cfg_path = d / "homeserver.yaml"
    subprocess.run([sys.executable, "-m", "hs.cli", "generate-config", "--server-name", "bench.local",
                    "--config-path", str(cfg_path), "--data-dir", str(d), "--force"], check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    cfg = yaml.safe_load(cfg_path.read_text())
    port = _free_port()
    cfg["listeners"] = [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "resources": ["client"]}]
    cfg["database"] = {"engine": "postgres", "dsn": pg_dsn(_create_pg_database("hs_bench_ss_"))}
    cfg["bcrypt_rounds"] = 4
    for key in ("rc_message", "rc_registration"):
        cfg[key] = OPEN
    cfg["rc_login"] = {"address": OPEN, "account": OPEN, "failed_attempts": OPEN}
    cfg["rc_joins"] = {"local": OPEN, "remote": OPEN}
    cfg_path.write_text(yaml.safe_dump(cfg))
    log = open(d / "hs.log", "ab")
    cmd = [*wrapper, sys.executable, "-m", "hs.cli", "run", "--config", str(cfg_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base, 120)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Server("hs", proc, base, cfg["registration_shared_secret"], d)


def start_synapse(workdir: Path, db_prefix: str = "synapse_bench_ss_",
                  extra: dict[str, Any] | None = None) -> Server:
    """Synapse as tests/federation/synapse.py installs it, on PostgreSQL, every rate limit off; `extra`
    config keys on top (bench_appservice.py registers its service so)."""
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
                                                     "database": _create_pg_database(db_prefix),
                                                     "cp_min": 5, "cp_max": 10}}
    secret = uuid.uuid4().hex
    conf["registration_shared_secret"] = secret
    for key in ("rc_message", "rc_registration", "rc_joins_per_room", "rc_room_creation", "rc_presence"):
        conf[key] = dict(OPEN)
    conf["rc_invites"] = {"per_room": OPEN, "per_user": OPEN, "per_issuer": OPEN}
    conf["rc_login"] = {"address": OPEN, "account": OPEN, "failed_attempts": OPEN}
    conf["rc_joins"] = {"local": OPEN, "remote": OPEN}
    conf.update({"trusted_key_servers": [], "suppress_key_server_warning": True, "enable_metrics": False,
                 "bcrypt_rounds": 4, "presence": {"enabled": False}, **(extra or {})})
    cfg_path.write_text(yaml.safe_dump(conf))
    env = {**os.environ, "SYNAPSE_ASYNC_IO_REACTOR": "0"}
    env.pop("PYTHONPATH", None)
    log = open(d / "stdout.log", "ab")
    proc = subprocess.Popen([str(py), "-m", "synapse.app.homeserver", "-c", str(cfg_path)], cwd=d, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base, 180)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Server("synapse", proc, base, secret, d)


@contextmanager
def profiled(server: Server | None, out_dir: str, phase: str) -> Iterator[None]:
    """py-spy (`--py-spy DIR`, found beside this Python or on PATH) attached to hs during one phase:
    collapsed stacks in DIR/PHASE.txt, idle frames included (`--idle`), so time the event loop waits (on
    PostgreSQL, on the notifier) shows as the frames that wait. `flamegraph.pl` or speedscope read the
    file."""
    if not out_dir or server is None or server.name != "hs":
        yield
        return
    beside = Path(sys.executable).parent / "py-spy"
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--py-spy: no py-spy beside this Python or on PATH")
    out = Path(out_dir) / f"{phase}.txt"
    proc = subprocess.Popen([spy, "record", "--pid", str(server.proc.pid), "--format", "raw", "--idle",
                             "--rate", "1000", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        proc.send_signal(2)
        proc.wait(30)
        print(f"  py-spy profile of {phase}: {out}", flush=True)


# -- set-up ---------------------------------------------------------------------------------------

async def populate(writer: User, reader: User, rooms: int, messages: int, concurrency: int) -> list[str]:
    """`rooms` rooms of the two users, each with `messages` messages; returns their IDs (creation order)."""
    room_ids: list[str | None] = [None] * rooms
    todo = iter(range(rooms))

    async def worker() -> None:
        for i in todo:
            initial_state = []
            if i % 5 == 0:
                initial_state.append({"type": "m.room.encryption", "state_key": "",
                                      "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
            body: dict[str, Any] = {"preset": "public_chat", "initial_state": initial_state}
            if i % 3 != 0:
                body["name"] = f"bench room {i}"
            room_id = (await writer.call("POST", "/createRoom", body))["room_id"]
            await reader.call("POST", f"/join/{room_id}", {})
            for m in range(messages):
                sender = writer if m % 2 == 0 else reader
                await sender.call("PUT", f"/rooms/{room_id}/send/m.room.message/{uuid.uuid4().hex}",
                                  {"msgtype": "m.text", "body": f"message {m} in room {i}"})
            room_ids[i] = room_id

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for r in room_ids if r is not None]


# -- sliding sync requests ---------------------------------------------------------------------------

def sliding_body(shape: str, conn_id: str, pos: str | None, timeout: int) -> dict[str, Any]:
    if shape == "unstable":
        return {"conn_id": conn_id, "lists": {"top": {"ranges": [list(TOP)], "timeline_limit": 1,
                                                      "required_state": REQUIRED_STATE}}}
    include = [p for p in REQUIRED_STATE if p[1] != "$LAZY"]
    body: dict[str, Any] = {"conn_id": conn_id, "timeout": timeout,
                            "lists": {"top": {"range": list(TOP), "timeline_limit": 1,
                                              "required_state": {"include": include, "lazy_members": True}}}}
    if pos is not None:
        body["pos"] = pos
    return body


async def sliding(u: User, shape: str, conn_id: str, pos: str | None = None, timeout: int = 0) -> Any:
    params = {}
    if shape == "unstable":
        params["timeout"] = str(timeout)
        if pos is not None:
            params["pos"] = pos
    path = UNSTABLE_PATH if shape == "unstable" else V4_PATH
    async with u.s.post(u.base + path, params=params, json=sliding_body(shape, conn_id, pos, timeout),
                        headers={"Authorization": f"Bearer {u.token}"}) as r:
        data = await r.json(content_type=None)
        if r.status != 200:
            raise RuntimeError(f"sliding sync ({shape}): {r.status} {data}")
        return data


def timeline_bodies(room: dict[str, Any]) -> list[str]:
    events = room.get("timeline", room.get("timeline_events", []))
    return [e.get("content", {}).get("body", "") for e in events]


async def first_once(reader: User, shape: str, rooms: int) -> float:
    """One fresh connection's first response (seconds), checked: 20 rooms, the list counts `rooms`."""
    t0 = time.perf_counter()
    data = await sliding(reader, shape, "first-" + uuid.uuid4().hex[:8])
    took = time.perf_counter() - t0
    got = data.get("rooms", {})
    count = data.get("lists", {}).get("top", {}).get("count")
    if len(got) != TOP[1] - TOP[0] + 1 or count != rooms:
        raise RuntimeError(f"unexpected first response: {len(got)} rooms, count {count}")
    return took


def first_summary(times: list[float]) -> dict[str, Any]:
    rest = times[1:] or times
    return {"first_ms": times[0] * 1000, "median_ms": statistics.median(rest) * 1000,
            "p90_ms": pct(rest, 90) * 1000, "n": len(rest)}


class Waker:
    """Wake-up trials of one kind of long-poll (sliding sync in one shape, or /sync) for the reader:
    each trial parks a long-poll, idles `idle_s`, has the writer PUT a message into one of the rooms
    (in turn: most are outside the top 20, so the list moves), and times from the PUT's start until
    the long-poll has returned with the message."""

    def __init__(self, writer: User, reader: User, room_ids: list[str], kind: str) -> None:
        self.writer, self.reader, self.room_ids, self.kind = writer, reader, room_ids, kind
        self.conn_id = "wake-" + uuid.uuid4().hex[:8]
        self.pos = ""
        self.latencies: list[float] = []

    async def _poll(self, since: str, timeout: int) -> Any:
        if self.kind == "sync":
            return await self.reader.call("GET", "/sync", params={"timeout": str(timeout), "since": since})
        return await sliding(self.reader, self.kind, self.conn_id, since, timeout)

    def _next(self, result: Any) -> str:
        return str(result["next_batch"] if self.kind == "sync" else result["pos"])

    def _bodies(self, result: Any, room: str) -> list[str]:
        if self.kind == "sync":
            room_data = result.get("rooms", {}).get("join", {}).get(room, {})
            return [e.get("content", {}).get("body", "") for e in room_data.get("timeline", {}).get("events", [])]
        return timeline_bodies(result.get("rooms", {}).get(room, {}))

    def _busy(self, result: Any) -> bool:
        return bool(result.get("rooms", {}).get("join") if self.kind == "sync" else result.get("rooms"))

    async def start(self) -> None:
        if self.kind == "sync":
            self.pos = self._next(await self.reader.call("GET", "/sync", params={"timeout": "0"}))
        else:
            self.pos = self._next(await sliding(self.reader, self.kind, self.conn_id))

    async def trial(self, i: int, idle_s: float) -> None:
        # Catch up (the other kinds' trials sent messages too), so the long-poll below parks.
        while self._busy(caught := await self._poll(self.pos, 0)):
            self.pos = self._next(caught)
        self.pos = self._next(caught)
        room = self.room_ids[i % len(self.room_ids)]
        body = f"wake {self.kind} {i} {uuid.uuid4().hex}"

        async def long_poll(since: str) -> tuple[Any, float]:
            result = await self._poll(since, 30000)
            return result, time.perf_counter()

        poll = asyncio.create_task(long_poll(self.pos))
        # Let the long-poll park; the machine idles meanwhile, as it does between a user's messages.
        await asyncio.sleep(idle_s)
        t0 = time.perf_counter()
        await self.writer.call("PUT", f"/rooms/{room}/send/m.room.message/{uuid.uuid4().hex}",
                               {"msgtype": "m.text", "body": body})
        while True:
            result, t1 = await poll
            self.pos = self._next(result)
            if body in self._bodies(result, room):
                break
            poll = asyncio.create_task(long_poll(self.pos))
        self.latencies.append(t1 - t0)

    def summary(self) -> dict[str, float]:
        return {"trials": len(self.latencies), "p50_ms": pct(self.latencies, 50) * 1000,
                "p90_ms": pct(self.latencies, 90) * 1000}


@dataclass
class Target:
    server: Server
    writer: User
    reader: User
    room_ids: list[str]

    @property
    def shapes(self) -> list[str]:
        return ["unstable", "v4"] if self.server.name == "hs" else ["unstable"]


async def set_up(s: aiohttp.ClientSession, server: Server, args: argparse.Namespace) -> Target:
    tag = uuid.uuid4().hex[:6]
    writer = await register(s, server.base, server.secret, f"writer{tag}")
    reader = await register(s, server.base, server.secret, f"reader{tag}")
    t0 = time.perf_counter()
    room_ids = await populate(writer, reader, args.rooms, args.messages, args.concurrency)
    print(f"  {server.name}: {len(room_ids)} rooms with {args.messages} messages each in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return Target(server, writer, reader, room_ids)


async def run_all(servers: list[Server], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Set every server up, then measure. First responses are taken in turn (one connection on each
    server, then the next), so every server sees the same machine load: other jobs share these CPUs."""
    out: dict[str, dict[str, Any]] = {srv.name: {} for srv in servers}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as s:
        targets = [await set_up(s, srv, args) for srv in servers]
        # Let the servers settle (background work after the burst of room creation).
        await asyncio.sleep(args.settle)
        hs_server = next((t.server for t in targets if t.server.name == "hs"), None)
        times: dict[tuple[str, str], list[float]] = {}
        with profiled(hs_server, args.py_spy, "first"):
            for _ in range(args.connections):
                for t in targets:
                    for shape in t.shapes:
                        times.setdefault((t.server.name, shape), []).append(
                            await first_once(t.reader, shape, len(t.room_ids)))
        for (name, shape), values in times.items():
            out[name][f"first_{shape}"] = first_summary(values)
        # Wake-ups: each server in turn; on it, the kinds take turns trial by trial (sliding sync in
        # each shape, /sync), so their ratio does not depend on when the load moved.
        for t in targets:
            wakers = [Waker(t.writer, t.reader, t.room_ids, kind) for kind in [*t.shapes, "sync"]]
            for w in wakers:
                await w.start()
            with profiled(t.server, args.py_spy, "wake"):
                for i in range(args.trials):
                    for w in wakers:
                        await w.trial(i, args.idle_ms / 1000)
            for w in wakers:
                out[t.server.name][f"wake_{w.kind}"] = w.summary()
    return out


def report(name: str, res: dict[str, Any]) -> None:
    for key, value in res.items():
        if key.startswith("first_"):
            print(f"  {name}: first response, top 20 of the rooms ({key[6:]}): median {value['median_ms']:.1f} ms, "
                  f"p90 {value['p90_ms']:.1f} ms over {value['n']} connections (the very first: "
                  f"{value['first_ms']:.1f} ms)", flush=True)
    for key, value in res.items():
        if key.startswith("wake_"):
            what = "/sync" if key == "wake_sync" else f"sliding sync ({key[5:]})"
            print(f"  {name}: {what} long-poll wake-up: median {value['p50_ms']:.1f} ms, p90 {value['p90_ms']:.1f} ms "
                  f"over {value['trials']} trials", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="hs,synapse")
    ap.add_argument("--rooms", type=int, default=500)
    ap.add_argument("--messages", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8, help="rooms created at a time")
    ap.add_argument("--connections", type=int, default=21, help="fresh connections for the first response")
    ap.add_argument("--trials", type=int, default=30, help="wake-up trials (each of sliding sync and /sync)")
    ap.add_argument("--idle-ms", type=float, default=50, help="how long a long-poll parks before the send")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds of quiet after the set-up")
    ap.add_argument("--hs-env", action="append", default=[], metavar="KEY=VALUE", help="environment for hs")
    ap.add_argument("--hs-wrapper", default="", help="a command hs runs under, e.g. 'py-spy record -o x.svg --'")
    ap.add_argument("--py-spy", default="", metavar="DIR",
                    help="profile hs with py-spy during each measured phase (collapsed stacks in DIR)")
    args = ap.parse_args()
    hs_env = dict(item.split("=", 1) for item in args.hs_env)

    commit = subprocess.run(["git", "log", "-1", "--format=%h"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"hs at {commit}; {args.rooms} rooms, {args.messages} messages each; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="hs-bench-ss-"))
    servers: list[Server] = []
    try:
        for target in args.targets.split(","):
            servers.append(start_hs(workdir, hs_env, args.hs_wrapper.split()) if target == "hs"
                           else start_synapse(workdir))
        results = asyncio.run(run_all(servers, args))
    finally:
        for server in servers:
            server.stop()
        _drop_created_databases()
    for name, res in results.items():
        report(name, res)
    print(f"(load average after it: {os.getloadavg()[0]:.1f})", flush=True)
    hs, syn = results.get("hs"), results.get("synapse")
    if hs:
        ratio = hs["wake_unstable"]["p50_ms"] / hs["wake_sync"]["p50_ms"]
        print(f"hs sliding sync wake-up / hs /sync wake-up (medians): {ratio:.2f}x (target <= 2x)")
    if hs and syn:
        ratio = hs["first_unstable"]["median_ms"] / syn["first_unstable"]["median_ms"]
        print(f"hs / Synapse first response (medians, unstable path): {ratio:.3f} (1/{1 / ratio:.1f}; target <= 1/10)")
        print(f"Synapse sliding sync wake-up / hs's: "
              f"{syn['wake_unstable']['p50_ms'] / hs['wake_unstable']['p50_ms']:.1f}x")
    print(f"logs in {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
