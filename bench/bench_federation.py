#!/usr/bin/env python3
"""Federation throughput and latency of hs and Synapse, both on PostgreSQL, side by side (figures, not
a test). Each target is started in turn (hs in a process of its own, Synapse as the federation tests
run it), talked to over real TLS by fake remote servers (bench/fed_fake.py) that hold their own
signing keys and certificates from a throwaway CA.

  .venv/bin/python bench/bench_federation.py                       # hs, then Synapse
  .venv/bin/python bench/bench_federation.py --targets hs          # hs only
  .venv/bin/python bench/bench_federation.py --py-spy /tmp/prof    # also profile hs per workload

Workloads:
  inbound:  a fake server joins a public room on the target (make_join, send_join v2), then pushes
            --txns transactions of --per-txn m.room.message PDUs (a linear chain), one at a time,
            each as soon as the last was answered; then --paced-txns more, each once the last PDU of
            the one before is readable through the Client-Server API by a local member. Figures:
            PDUs/s by the /send answers, how many PDUs reached the room's timeline (/messages), and
            PDUs/s into the timeline. Synapse answers /send before it processes the PDUs (it stages
            them) and drops staged PDUs when 100 or more wait, so the paced figure is the comparable
            one; hs answers once they are persisted.
  join:     a fake server hosts a public room of --members members and --state state events; a local
            user joins it (POST /join?server_name=) and sends a message, --join-runs times (a new
            room each time). Figures (median): seconds until the join returns, and until the send
            of the message returns 200.
  outbound: --servers fake servers each join one user to a room on the target; a local user sends a
            message --trials times. Figure: time from the PUT starting until every fake server has
            received the PDU, p50/p95.

The fake servers and clients share the benchmark's process (and the machine) with the server under
test, so their own CPU time is part of every figure, for either target alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fed_fake import BenchRemote  # noqa: E402

from tests.federation.client import TlsClient, unique  # noqa: E402
from tests.federation.synapse import (  # noqa: E402
    SYNAPSE_VERSION,
    SynapseServer,
    create_synapse_database,
    ensure_synapse,
    shared_secret_register,
)
from tests.federation.tls import TestCA  # noqa: E402
from tests.services import create_database, drop_database  # noqa: E402

HS_SHARED_SECRET = "shared-secret"  # tests/harness.py's registration_shared_secret
HS_PROCESS = ROOT / "bench" / "fed_hs_proc.py"  # what runs hs (a profiling wrapper may stand in)


def q(value: str) -> str:
    return quote(value, safe="")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class Target(Protocol):
    """A running server under test (tests.federation.client.MatrixServer, plus a pid to profile)."""

    @property
    def server_name(self) -> str: ...

    async def register_user(self, localpart: str, password: str = ..., admin: bool = ...) -> tuple[str, str]: ...

    def client(self, token: str | None = None) -> TlsClient: ...

    def log_tail(self, n: int = 50) -> str: ...


class HsProcess:
    """A FederatingHs on PostgreSQL in a child process (bench/fed_hs_proc.py)."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any], ca_path: Path, log: Path) -> None:
        self.proc = proc
        self.server_name = str(info["server_name"])
        self.base_url = str(info["base_url"])
        self.ca_path = ca_path
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, token: str | None = None) -> TlsClient:
        return TlsClient(self.base_url, self.ca_path, token)

    async def register_user(self, localpart: str, password: str = "password123",
                            admin: bool = False) -> tuple[str, str]:
        return await shared_secret_register(self.client(), HS_SHARED_SECRET, localpart, password, admin)

    def log_tail(self, n: int = 50) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def start_hs(workdir: Path, ca: TestCA, dsn: str) -> HsProcess:
    data = workdir / "hs"
    data.mkdir(parents=True, exist_ok=True)
    cert = ca.issue(data / "tls")
    log = data / "stderr.log"
    with open(log, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HS_PROCESS), str(data), dsn, str(cert.cert_path),
            str(cert.key_path), str(cert.ca_path), stdout=subprocess.PIPE, stderr=err, cwd=str(ROOT))
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
    except TimeoutError:
        proc.kill()
        raise RuntimeError(f"hs did not start:\n{log.read_text(errors='replace')[-3000:]}") from None
    if not line:
        raise RuntimeError(f"hs exited while starting:\n{log.read_text(errors='replace')[-3000:]}")
    return HsProcess(proc, json.loads(line), cert.ca_path, log)


async def user(target: Target, prefix: str) -> TlsClient:
    user_id, token = await target.register_user(unique(prefix))
    c = target.client(token)
    c.user_id = user_id
    return c


async def call(c: TlsClient, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
    status, data = await c.request(method, path, body, params=params)
    if status != 200:
        raise RuntimeError(f"{method} {path}: {status} {data}")
    return data


async def create_room(c: TlsClient, room_version: str) -> str:
    body = await call(c, "POST", "/createRoom", {"preset": "public_chat", "room_version": room_version})
    return str(body["room_id"])


async def wait_visible(c: TlsClient, room_id: str, event_id: str, timeout: float = 180.0) -> float:
    """Poll GET /rooms/{room}/event/{event} as a member until it answers 200; the moment it did. The
    polls space out as the wait grows (10% of the time waited, 10-250 ms), so that a slow target is
    not kept busy answering them while a fast one is not timed coarsely."""
    began = time.perf_counter()
    path = f"/rooms/{q(room_id)}/event/{q(event_id)}"
    while (waited := time.perf_counter() - began) < timeout:
        status, _ = await c.request("GET", path)
        if status == 200:
            return time.perf_counter()
        await asyncio.sleep(min(0.25, max(0.01, waited / 10)))
    raise RuntimeError(f"{event_id} not visible in {room_id} after {timeout:.0f}s")


@dataclass
class Fakes:
    """The fake servers started for one target (stopped together)."""

    ca: TestCA
    directory: Path
    started: list[BenchRemote] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def new(self) -> BenchRemote:
        fake = BenchRemote(self.ca, self.directory)
        fake.on_arrival = self.arrived.set
        await fake.start()
        self.started.append(fake)
        return fake

    async def stop(self) -> None:
        for fake in self.started:
            await fake.stop()
        self.started.clear()


# -- workloads ---------------------------------------------------------------------------------------
async def bench_inbound(target: Target, fakes: Fakes, txns: int, paced_txns: int, per_txn: int,
                        room_version: str) -> dict[str, Any]:
    """Two phases in one room: `txns` transactions back to back (the next as soon as /send answered),
    then `paced_txns` paced ones (the next once the last PDU of the previous one is readable)."""
    alice = await user(target, "alice")
    room_id = await create_room(alice, room_version)
    fake = await fakes.new()
    await fake.join(target.server_name, room_id, "pusher")
    sender = fake.user_id("pusher")

    def batch(n: str) -> tuple[list[str], list[dict[str, Any]]]:
        built = [fake.build(room_id, sender, "m.room.message", {"msgtype": "m.text", "body": f"inbound {n}.{i}"})
                 for i in range(per_txn)]
        return [b[0] for b in built], [b[1] for b in built]

    # Every PDU is built and signed before the clock starts.
    warm_ids, warm = batch("warm")
    pushed = [batch(f"b{n}") for n in range(txns)]
    paced = [batch(f"p{n}") for n in range(paced_txns)]

    async def push(pdus: list[dict[str, Any]]) -> None:
        status, answer = await fake.send_transaction(target.server_name, pdus)
        if status != 200:
            raise RuntimeError(f"/send answered {status}: {answer}")
        errors = {e: r["error"] for e, r in answer.get("pdus", {}).items() if r.get("error")}
        if errors:
            raise RuntimeError(f"/send refused PDUs: {list(errors.items())[:3]}")

    await push(warm)  # not timed: first transaction of the room, connections and caches warm up
    await wait_visible(alice, room_id, warm_ids[-1])
    pdus = txns * per_txn
    result: dict[str, Any] = {"pdus": pdus}

    t0 = time.perf_counter()
    for _, txn in pushed:
        await push(txn)
    answered = time.perf_counter() - t0
    visible = await wait_visible(alice, room_id, pushed[-1][0][-1]) - t0
    in_timeline, settled = await settled_count(alice, room_id, {e for ids, _ in pushed for e in ids}, t0)
    settled_s = max(settled or 0.0, visible)
    result.update(answered_s=answered, answered_per_s=pdus / answered, visible_s=visible,
                  in_timeline=in_timeline, settled_s=settled_s, timeline_per_s=in_timeline / settled_s)

    await asyncio.sleep(1.0)
    t0 = time.perf_counter()
    for ids, txn in paced:
        await push(txn)
        await wait_visible(alice, room_id, ids[-1])
    paced_s = time.perf_counter() - t0
    paced_in, _ = await settled_count(alice, room_id, {e for ids, _ in paced for e in ids}, t0)
    result.update(paced_pdus=paced_txns * per_txn, paced_s=paced_s, paced_per_s=paced_txns * per_txn / paced_s,
                  paced_in_timeline=paced_in)
    await alice.close()
    return result


async def settled_count(c: TlsClient, room_id: str, wanted: set[str], t0: float) -> tuple[int, float | None]:
    """How many of `wanted` are in the room's timeline once the count stops growing (checked each
    second), and when it last grew (seconds after `t0`; None if all were there at the first look).
    The last PDU readable does not prove the others went in: Synapse takes a transaction's PDUs into
    a staging table and processes them in the order of their arrival millisecond (so not always in
    order), and prunes that table to its forward extremities when 100 or more wait, leaving the
    dropped PDUs to back-pagination."""
    count = await count_in_timeline(c, room_id, wanted)
    last_growth: float | None = None
    stable = 0
    while count < len(wanted) and stable < 3:
        await asyncio.sleep(1.0)
        now = await count_in_timeline(c, room_id, wanted)
        if now != count:
            last_growth, stable = time.perf_counter() - t0, 0
        else:
            stable += 1
        count = now
    return count, last_growth


async def count_in_timeline(c: TlsClient, room_id: str, wanted: set[str]) -> int:
    """How many of `wanted` a member sees when paging the room's timeline back (/messages)."""
    seen: set[str] = set()
    params = {"dir": "b", "limit": "1000"}
    while True:
        page = await call(c, "GET", f"/rooms/{q(room_id)}/messages", params=params)
        chunk = page.get("chunk", [])
        seen.update(e["event_id"] for e in chunk if e.get("event_id") in wanted)
        if not chunk or "end" not in page or len(seen) == len(wanted):
            return len(seen)
        params = {**params, "from": page["end"]}


async def bench_join(target: Target, fakes: Fakes, members: int, state_events: int,
                     room_version: str) -> dict[str, Any]:
    host = await fakes.new()
    began = time.perf_counter()
    room_id = host.host_room(members, state_events, room_version)
    generated = time.perf_counter() - began
    bob = await user(target, "bob")
    t0 = time.perf_counter()
    await call(bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": host.server_name})
    joined = time.perf_counter() - t0
    sent = await call(bob, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/{uuid.uuid4().hex}",
                      {"msgtype": "m.text", "body": "hello big room"})
    sendable = time.perf_counter() - t0
    event_id = sent["event_id"]
    deadline = time.perf_counter() + 60
    while event_id not in host.arrivals and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    arrived = host.arrivals[event_id] - t0 if event_id in host.arrivals else None
    asked = Counter(r.split()[0] + " " + "/".join(r.split()[1].split("/")[:5]) for r in host.requests)
    await bob.close()
    return {"generate_s": generated, "join_s": joined, "sendable_s": sendable, "arrived_s": arrived,
            "requests": dict(asked)}


async def bench_outbound(target: Target, fakes: Fakes, servers: int, trials: int, room_version: str,
                         warmup: int = 3) -> dict[str, Any]:
    alice = await user(target, "carol")
    room_id = await create_room(alice, room_version)
    remotes = [await fakes.new() for _ in range(servers)]
    for r in remotes:
        await r.join(target.server_name, room_id, "listener")
    latencies: list[float] = []
    for i in range(warmup + trials):
        fakes.arrived.clear()
        t0 = time.perf_counter()
        sent = await call(alice, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/{uuid.uuid4().hex}",
                          {"msgtype": "m.text", "body": f"outbound {i}"})
        eid = sent["event_id"]
        while not all(eid in r.arrivals for r in remotes):
            fakes.arrived.clear()
            try:
                await asyncio.wait_for(fakes.arrived.wait(), 30)
            except TimeoutError:
                missing = sum(eid not in r.arrivals for r in remotes)
                raise RuntimeError(f"{missing} of {servers} servers never received {eid}") from None
        if i >= warmup:
            latencies.append(max(r.arrivals[eid] for r in remotes) - t0)
        await asyncio.sleep(0.1)
    await alice.close()
    return {"servers": servers, "trials": trials, "p50_ms": pct(latencies, 50) * 1000,
            "p95_ms": pct(latencies, 95) * 1000, "max_ms": max(latencies) * 1000}


# -- running -------------------------------------------------------------------------------------------
class Profiler:
    """py-spy recording the hs process during one workload (--py-spy), as a speedscope file."""

    def __init__(self, directory: Path | None, pid: int | None) -> None:
        self.directory, self.pid = directory, pid
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, name: str) -> None:
        if self.directory is None or self.pid is None:
            return
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = self.directory / f"hs-{name}.speedscope.json"
        self.proc = subprocess.Popen([exe, "record", "-p", str(self.pid), "-r", "200", "-f", "speedscope",
                                      "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(2)
            self.proc.wait(30)
            self.proc = None


async def run_target(label: str, args: argparse.Namespace, ca: TestCA, workdir: Path,
                     base_dsn: str) -> dict[str, Any]:
    target: Any
    if label == "hs":
        dsn = await create_database(base_dsn)
        target = await start_hs(workdir, ca, dsn)
        profiler = Profiler(args.py_spy, target.pid)
    else:
        python = ensure_synapse()
        dsn = await create_synapse_database(base_dsn)
        d = workdir / "synapse"
        target = SynapseServer(python, d, dsn, ca.issue(d / "tls"))
        await asyncio.to_thread(target.start)
        profiler = Profiler(None, None)
    fakes = Fakes(ca, workdir / f"fakes-{label}")
    results: dict[str, Any] = {}
    try:
        for name in args.workloads.split(","):
            await asyncio.sleep(1.0)  # let the target settle after the last workload's traffic
            profiler.start(name)
            try:
                if name == "inbound":
                    res = await bench_inbound(target, fakes, args.txns, args.paced_txns, args.per_txn,
                                              args.room_version)
                    print(f"{label}: inbound, {res['pdus']} PDUs in {args.txns} transactions back to back: /send "
                          f"answered in {res['answered_s']:.2f} s ({res['answered_per_s']:.0f} PDUs/s), the last PDU "
                          f"readable after {res['visible_s']:.2f} s; {res['in_timeline']} of the {res['pdus']} in the "
                          f"timeline ({res['timeline_per_s']:.0f} PDUs/s into the timeline)", flush=True)
                    print(f"{label}: inbound, paced (each transaction readable before the next): {res['paced_pdus']} PDUs "
                          f"in {res['paced_s']:.2f} s ({res['paced_per_s']:.0f} PDUs/s); {res['paced_in_timeline']} "
                          f"in the timeline", flush=True)
                elif name == "join":
                    runs = [await bench_join(target, fakes, args.members, args.state, args.join_room_version)
                            for _ in range(args.join_runs)]
                    for r in runs:
                        arrived = f"{r['arrived_s']:.2f} s" if r["arrived_s"] is not None else "never"
                        print(f"{label}: join of a room with {args.members} members / {args.state} state events: "
                              f"join returned after {r['join_s']:.2f} s, message sent after {r['sendable_s']:.2f} s, "
                              f"reached the resident server after {arrived}; requests to it: {r['requests']} "
                              f"(room generated offline in {r['generate_s']:.1f} s)", flush=True)
                    res = {k: statistics.median(r[k] for r in runs) for k in ("join_s", "sendable_s")}
                    res["runs"] = runs
                elif name == "outbound":
                    res = await bench_outbound(target, fakes, args.servers, args.trials, args.room_version)
                    print(f"{label}: outbound to {args.servers} servers, {args.trials} messages: p50 "
                          f"{res['p50_ms']:.1f} ms, p95 {res['p95_ms']:.1f} ms, max {res['max_ms']:.1f} ms", flush=True)
                else:
                    raise SystemExit(f"unknown workload {name}")
            except Exception:
                print(f"{label}: {name} failed; log tail:\n{target.log_tail(30)}", file=sys.stderr, flush=True)
                raise
            finally:
                profiler.stop()
                await fakes.stop()
            results[name] = res
    finally:
        if label == "hs":
            await target.stop()
        else:
            await asyncio.to_thread(target.stop)
        await drop_database(dsn)
    return results


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "-"


def print_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    labels = {"hs": "hs (PostgreSQL)", "synapse": f"Synapse {SYNAPSE_VERSION} (PostgreSQL)"}
    cols = [k for k in ("hs", "synapse") if k in results]
    rows: list[tuple[str, list[str], str]] = []

    def get(key: str, workload: str, metric: str) -> float | None:
        v = results.get(key, {}).get(workload, {}).get(metric)
        return float(v) if v is not None else None

    def row(title: str, workload: str, metric: str, fmt: str, higher_better: bool) -> None:
        vals = [get(k, workload, metric) for k in cols]
        if all(v is None for v in vals):
            return
        cells = [fmt.format(v) if v is not None else "-" for v in vals]
        h, s = get("hs", workload, metric), get("synapse", workload, metric)
        rel = ""
        if h and s:
            rel = f"hs {ratio(h, s)} Synapse" if higher_better else f"hs at {h / s:.2f} of Synapse"
        rows.append((title, cells, rel))

    n = args.txns * args.per_txn
    row(f"inbound back to back ({args.txns}x{args.per_txn} PDUs): PDUs/s by /send answers", "inbound",
        "answered_per_s", "{:.0f}", True)
    row(f"inbound back to back: of the {n} PDUs, in the timeline", "inbound", "in_timeline", "{:.0f}", True)
    row("inbound back to back: PDUs/s into the timeline", "inbound", "timeline_per_s", "{:.0f}", True)
    row(f"inbound paced ({args.paced_txns}x{args.per_txn}, each readable before the next): PDUs/s", "inbound", "paced_per_s", "{:.0f}", True)
    row(f"inbound paced: of the {args.paced_txns * args.per_txn} PDUs, in the timeline", "inbound", "paced_in_timeline", "{:.0f}", True)
    row(f"join ({args.members} members, {args.state} state; median of {args.join_runs}): join returned, s", "join", "join_s", "{:.2f}", False)
    row("join: join + first message sent, s", "join", "sendable_s", "{:.2f}", False)
    row(f"outbound to {args.servers} servers: p50 ms", "outbound", "p50_ms", "{:.1f}", False)
    row(f"outbound to {args.servers} servers: p95 ms", "outbound", "p95_ms", "{:.1f}", False)
    header = ["workload", *[labels[k] for k in cols], "hs vs Synapse"]
    table = [header] + [[t, *c, r] for t, c, r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print()
    for r in table:
        print(" | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)))


async def amain(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="hs-bench-fed-"))
    ca = TestCA(workdir / "ca")
    base_dsn = os.environ.get("HS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    try:
        for label in args.targets.split(","):
            results[label] = await run_target(label, args, ca, workdir, base_dsn)
    finally:
        print_table(results, args)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="hs,synapse")
    ap.add_argument("--workloads", default="inbound,join,outbound")
    ap.add_argument("--txns", type=int, default=40, help="inbound: transactions timed")
    ap.add_argument("--paced-txns", type=int, default=10,
                    help="inbound: transactions timed when each must be readable before the next is sent")
    ap.add_argument("--per-txn", type=int, default=50, help="inbound: PDUs per transaction")
    ap.add_argument("--members", type=int, default=2000, help="join: members of the hosted room")
    ap.add_argument("--state", type=int, default=5000, help="join: state events of the hosted room")
    ap.add_argument("--join-runs", type=int, default=3, help="join: rooms joined (each a new one); the median")
    ap.add_argument("--servers", type=int, default=20, help="outbound: fake servers in the room")
    ap.add_argument("--trials", type=int, default=30, help="outbound: messages timed")
    ap.add_argument("--room-version", default="10", help="inbound and outbound: the room version created")
    ap.add_argument("--join-room-version", default="10", help="join: the hosted room's version")
    ap.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                    help="record hs with py-spy during each workload (speedscope files in DIR)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory (logs, configs)")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
