#!/usr/bin/env python3
"""The federation sender's restart lag and steady-state cost, hs vs Synapse (figures, not a test).

  .venv/bin/python bench/bench_federation_sender.py --messages 600 --rate 15 --rounds 2   # docs/performance.md
  .venv/bin/python bench/bench_federation_sender.py --messages 1000                        # steady state unpaced
  .venv/bin/python bench/bench_federation_sender.py --servers 100 --rooms 20 --messages 100 # a quick run
  .venv/bin/python bench/bench_federation_sender.py --targets hs --py-spy /tmp/prof        # hs only, profiled

Synapse's worker mode needs its `redis` extra in the test virtualenv:
  ~/.cache/hs-tests/synapse-venv/bin/pip install "matrix-synapse[postgres,redis]==1.163.2"

Each target runs as processes, on a fresh PostgreSQL database and a throwaway Redis, with one
federation sender worker:
  hs:      main (client, federation, events) + `fed_sender1` (`app: federation_sender`, the only entry
           of `federation_sender_instances`), nginx with TLS in front (tests/federation/cluster_hs.py);
  Synapse: main + `fed_sender1` (`synapse.app.generic_worker`, `federation_sender_instances`, Redis,
           `instance_map` naming main's replication listener).

The remote servers are bench/fed_many.py's ManyRemotes: --servers fake servers on as many TLS ports of
one process (this one), each with its own signing key. A local user creates --rooms public rooms; the
fake servers join them through make_join/send_join (server i joins room i mod --rooms, so each room has
servers/rooms remote servers, each server one room).

Phases (each waits until every fake server has received what it is owed):
  warm-up: one message per room.
  idle:    the sender's CPU over --idle seconds with nothing to send.
  steady:  --messages messages, round robin over the rooms, --concurrency PUTs at a time (paced at --rate
           messages/s if given, so that both targets get the same offered load). Figure: the
           sender process's CPU time (utime+stime, /proc) from the first PUT until the last delivery,
           per delivered (PDU x destination).
  restart: kill -9 of the sender; --per-room messages in every room while it is down; the sender started
           again. Figures: seconds from spawning the new process until every fake server has received
           the last message of its room (Synapse's catch-up sends only the newest event of each room, the
           remote asking for the rest; hs sends them all: both count as drained when the newest has
           arrived), and the new process's CPU time over that window (its start-up included). If nothing
           at all has arrived --nudge-after seconds after the spawn (Synapse's restarted sender reads
           the events stream only once it hears of a new event), one more message is sent in the first
           room (its servers then wait for that one instead) and the wait goes on; the table says so.
           Then the wait goes on (--backlog-timeout) for the whole backlog: every message sent while
           down at every server of its room; time and CPU from the spawn until then.

The fake servers and the client share this process and the machine with the server under test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fed_many import BODY_PREFIX, ManyRemotes  # noqa: E402

from tests.federation.client import TlsClient  # noqa: E402
from tests.federation.cluster_hs import FederatingCluster, _fill_instance_map, sender_worker  # noqa: E402
from tests.federation.hs_server import SHARED_SECRET as HS_SECRET  # noqa: E402
from tests.federation.synapse import (  # noqa: E402
    SHARED_SECRET as SYNAPSE_SECRET,
)
from tests.federation.synapse import (  # noqa: E402
    SYNAPSE_VERSION,
    SynapseServer,
    create_synapse_database,
    ensure_synapse,
    shared_secret_register,
)
from tests.federation.tls import TestCA  # noqa: E402
from tests.services import ThrowawayRedis, create_database, drop_database, free_port  # noqa: E402

SENDER = "fed_sender1"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def q(value: str) -> str:
    return quote(value, safe="")


class Profiler:
    """py-spy recording one process during one phase (--py-spy), as a speedscope file."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, name: str, pid: int) -> None:
        if self.directory is None:
            return
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = self.directory / f"{name}.speedscope.json"
        self.proc = subprocess.Popen([exe, "record", "-p", str(pid), "-r", "100", "-f", "speedscope", "-o", str(out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)
            self.proc = None


# -- the targets -----------------------------------------------------------------------------------------
class HsTarget:
    """hs as main + one federation sender worker (FederatingCluster reshaped), nginx with TLS in front."""

    label = "hs"

    def __init__(self, workdir: Path, ca: TestCA, dsn: str, redis_url: str) -> None:
        self.cluster = FederatingCluster(workdir, dsn, redis_url, ca.issue(workdir / "tls"))
        raw = self.cluster.raw
        raw["workers"] = {SENDER: sender_worker()}
        raw["federation_sender_instances"] = [SENDER]
        raw.pop("stream_writers", None)
        raw["instance_map"] = {}
        raw["use_presence"] = False
        _fill_instance_map(raw)
        self.cluster._apply()
        self.server_name = self.cluster.server_name
        self.base_url = self.cluster.base_url
        self.ca_path = ca.ca_path

    async def start(self) -> None:
        await asyncio.to_thread(self.cluster.start)

    async def stop(self) -> None:
        await asyncio.to_thread(self.cluster.stop)

    def sender_pid(self) -> int:
        return self.cluster.cluster.procs[SENDER].pid

    async def kill_sender(self) -> None:
        await self.cluster.kill_instance(SENDER)

    async def start_sender(self) -> asyncio.Task[Any]:
        """Spawn the sender; returns once its process exists (the task finishes when it listens)."""
        task = asyncio.create_task(self.cluster.start_instance(SENDER))
        while not self.cluster.cluster.is_running(SENDER):
            await asyncio.sleep(0.001)
        return task

    async def register(self, localpart: str) -> tuple[str, str]:
        return await shared_secret_register(TlsClient(self.base_url, self.ca_path), HS_SECRET, localpart,
                                            "password123", False)

    def log_tail(self) -> str:
        return self.cluster.log_tail(40)


class SynapseTarget:
    """Synapse main + a generic_worker named in federation_sender_instances (Redis replication)."""

    label = "synapse"

    def __init__(self, workdir: Path, ca: TestCA, dsn: str, redis_url: str) -> None:
        self.python = ensure_synapse()
        self.dir = workdir
        self.server = SynapseServer(self.python, workdir, dsn, ca.issue(workdir / "tls"))
        repl = free_port()
        tls_listener = self.server._config()["listeners"][0]
        redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        self.server._overrides = {
            "listeners": [tls_listener, {"port": repl, "bind_addresses": ["127.0.0.1"], "type": "http",
                                         "resources": [{"names": ["replication"]}]}],
            "redis": {"enabled": True, "host": "127.0.0.1", "port": redis_port},
            "instance_map": {"main": {"host": "127.0.0.1", "port": repl}},
            "federation_sender_instances": [SENDER],
            "presence": {"enabled": False},
        }
        self.server._write_config()
        log = yaml.safe_load((workdir / "log.yaml").read_text())
        log["handlers"]["file"]["filename"] = str(workdir / "worker.log")
        (workdir / "worker_log.yaml").write_text(yaml.safe_dump(log, sort_keys=False))
        (workdir / "worker.yaml").write_text(yaml.safe_dump({
            "worker_app": "synapse.app.generic_worker", "worker_name": SENDER,
            "worker_log_config": str(workdir / "worker_log.yaml")}, sort_keys=False))
        self.worker: subprocess.Popen[bytes] | None = None
        self.server_name = self.server.server_name
        self.base_url = self.server.base_url
        self.ca_path = ca.ca_path

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)
        await self.start_sender()

    async def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(10)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        await asyncio.to_thread(self.server.stop)

    def sender_pid(self) -> int:
        assert self.worker is not None
        return self.worker.pid

    async def kill_sender(self) -> None:
        assert self.worker is not None
        self.worker.kill()
        self.worker.wait()
        self.worker = None

    async def start_sender(self) -> asyncio.Task[Any]:
        env = {**os.environ, "SYNAPSE_ASYNC_IO_REACTOR": "0", "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)
        with open(self.dir / "worker.stdout", "ab") as out:
            self.worker = subprocess.Popen(
                [str(self.python), "-m", "synapse.app.generic_worker", "--config-path",
                 str(self.server.config_path), "--config-path", str(self.dir / "worker.yaml")],
                cwd=self.dir, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return asyncio.create_task(asyncio.sleep(0))

    async def register(self, localpart: str) -> tuple[str, str]:
        return await shared_secret_register(self.server.client(), SYNAPSE_SECRET, localpart, "password123", False)

    def log_tail(self) -> str:
        tail = self.server.log_tail(20)
        try:
            worker = "\n".join((self.dir / "worker.log").read_text(errors="replace").splitlines()[-20:])
        except FileNotFoundError:
            worker = "(no worker log)"
        return f"--- main ---\n{tail}\n--- worker ---\n{worker}"


# -- the workload ------------------------------------------------------------------------------------------
class Run:
    def __init__(self, target: HsTarget | SynapseTarget, remotes: ManyRemotes, args: argparse.Namespace) -> None:
        self.t = target
        self.remotes = remotes
        self.args = args
        self.rooms: list[str] = []
        self.servers_of: list[list[int]] = []  # room index -> fake server indexes
        self.seq = 0
        self.client: TlsClient | None = None

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        assert self.client is not None
        status, data = await self.client.request(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {data}")
        return data

    async def setup(self) -> dict[str, Any]:
        user_id, token = await self.t.register("alice" + uuid.uuid4().hex[:6])
        self.client = TlsClient(self.t.base_url, self.t.ca_path, token)
        began = time.perf_counter()
        for _ in range(self.args.rooms):
            body = await self.call("POST", "/createRoom", {"preset": "public_chat", "room_version": "10"})
            self.rooms.append(str(body["room_id"]))
        self.servers_of = [[] for _ in self.rooms]
        for i in range(len(self.remotes.servers)):
            self.servers_of[i % len(self.rooms)].append(i)
        created = time.perf_counter() - began
        limit = asyncio.Semaphore(self.args.join_concurrency)
        done = 0

        async def join(i: int) -> None:
            nonlocal done
            async with limit:
                server = self.remotes.servers[i]
                for attempt in range(5):
                    try:
                        await server.join(self.t.server_name, self.rooms[i % len(self.rooms)], "listener")
                        break
                    except (AssertionError, OSError) as e:
                        if attempt == 4:
                            raise RuntimeError(f"{server.server_name} could not join: {e}") from e
                        await asyncio.sleep(1)
                done += 1
                if done % 100 == 0:
                    print(f"  {self.t.label}: {done} joins after {time.perf_counter() - began:.0f} s", flush=True)

        began = time.perf_counter()
        await asyncio.gather(*(join(i) for i in range(len(self.remotes.servers))))
        return {"rooms_s": created, "joins_s": time.perf_counter() - began}

    async def send(self, messages: list[int], concurrency: int, rate: float = 0.0) -> None:
        """PUT one message per entry of `messages` (room indexes), `concurrency` at a time; with `rate`,
        the k-th PUT starts no earlier than k/rate seconds after the first."""
        queue = list(enumerate(messages))
        queue.reverse()
        began = time.perf_counter()

        async def worker() -> None:
            while queue:
                k, room = queue.pop()
                self.seq += 1
                seq = self.seq
                if rate > 0:
                    await asyncio.sleep(max(0.0, began + k / rate - time.perf_counter()))
                await self.call("PUT", f"/rooms/{q(self.rooms[room])}/send/m.room.message/{uuid.uuid4().hex}",
                                {"msgtype": "m.text", "body": f"{BODY_PREFIX}{seq}"})

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    def expect_all(self, first_seq: int, messages: list[int]) -> int:
        """Expect every message (seqs first_seq+1.. in the order of `messages`) at every server of its room."""
        deliveries = [(s, first_seq + 1 + k) for k, room in enumerate(messages) for s in self.servers_of[room]]
        self.remotes.expect(deliveries)
        return len(deliveries)

    async def wait(self, what: str, timeout: float) -> float:
        began = time.perf_counter()
        if not await self.remotes.wait(timeout):
            raise RuntimeError(f"{self.t.label}: {what}: {self.remotes.outstanding} deliveries to "
                               f"{self.remotes.servers_waiting()} servers still missing after {timeout:.0f} s")
        return time.perf_counter() - began

    async def warm(self) -> float:
        messages = list(range(len(self.rooms)))
        began = time.perf_counter()
        self.expect_all(self.seq, messages)
        await self.send(messages, self.args.concurrency)
        await self.wait("warm-up", 300)
        return time.perf_counter() - began

    async def idle(self) -> float:
        pid = self.t.sender_pid()
        c0 = cpu_seconds(pid)
        seconds = float(self.args.idle)
        await asyncio.sleep(seconds)
        return (cpu_seconds(pid) - c0) / seconds

    async def steady(self, profiler: Profiler) -> dict[str, Any]:
        n = self.args.messages
        messages = [k % len(self.rooms) for k in range(n)]
        pid = self.t.sender_pid()
        profiler.start(f"{self.t.label}-steady", pid)
        pdus0, txns0 = self.remotes.totals()
        deliveries = self.expect_all(self.seq, messages)
        c0, t0 = cpu_seconds(pid), time.perf_counter()
        await self.send(messages, self.args.concurrency, self.args.rate)
        sent_s = time.perf_counter() - t0
        await self.wait("steady state", 600)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(pid) - c0
        profiler.stop()
        pdus1, txns1 = self.remotes.totals()
        return {"messages": n, "deliveries": deliveries, "sent_s": sent_s, "wall_s": wall, "cpu_s": cpu,
                "cpu_us_per_delivery": cpu / deliveries * 1e6, "pdus_received": pdus1 - pdus0,
                "transactions": txns1 - txns0}

    async def restart(self, profiler: Profiler) -> dict[str, Any]:
        k = self.args.per_room
        await self.t.kill_sender()
        messages = [room for _ in range(k) for room in range(len(self.rooms))]
        first = self.seq
        down0 = time.perf_counter()
        await self.send(messages, self.args.concurrency)
        # The newest message of each room, at every server of it.
        last_of_room = {room: first + 1 + idx for idx, room in enumerate(messages)}
        self.remotes.expect((s, seq) for room, seq in last_of_room.items() for s in self.servers_of[room])
        owed = self.remotes.outstanding
        sent_s = time.perf_counter() - down0
        await asyncio.sleep(self.args.down_pause)
        pdus0, txns0 = self.remotes.totals()
        t0 = time.perf_counter()
        started = await self.t.start_sender()
        pid = self.t.sender_pid()
        profiler.start(f"{self.t.label}-restart", pid)
        nudged_at: float | None = None
        ok = await self.remotes.wait(self.args.nudge_after)
        if not ok and self.remotes.totals()[0] > pdus0:
            ok = await self.remotes.wait(self.args.restart_timeout - self.args.nudge_after)
        elif not ok:
            # Nothing arrived (Synapse's restarted sender reads the events stream only when told of a new
            # event): one more message, in the first room, and wait again.
            nudged_at = time.perf_counter() - t0
            # Synapse's catch-up sends only a room's newest event: the nudge replaces room 0's newest.
            self.remotes.forget((s, last_of_room[0]) for s in self.servers_of[0])
            self.expect_all(self.seq, [0])
            await self.send([0], 1)
            ok = await self.remotes.wait(self.args.restart_timeout)
        lag = time.perf_counter() - t0
        cpu = cpu_seconds(pid)
        profiler.stop()
        missing = self.remotes.outstanding
        if missing:
            rooms_missing = sorted({i % len(self.rooms) for i in self.remotes.missing()})
            print(f"  {self.t.label}: still missing after restart: {missing} deliveries, rooms {rooms_missing[:20]}",
                  flush=True)
        listening_s = None
        if started.done() and not started.exception():
            res = started.result()
            listening_s = float(res) if isinstance(res, float) else None
        await started
        pdus1, txns1 = self.remotes.totals()
        # Then the whole backlog: every message sent while down, at every server of its room (hs sends
        # them all from its catch-up; Synapse's catch-up sends a room's newest, the rest may follow).
        all_s = all_cpu = None
        backlog = [(s, first + 1 + idx) for idx, room in enumerate(messages) for s in self.servers_of[room]]
        self.remotes.expect(backlog)
        all_ok = await self.remotes.wait(self.args.backlog_timeout)
        backlog_missing = self.remotes.outstanding
        if all_ok:
            all_s, all_cpu = time.perf_counter() - t0, cpu_seconds(pid)
        else:
            self.remotes.forget(backlog)
        result = {"messages": len(messages), "sent_while_down_s": sent_s, "owed": owed, "drained": ok,
                  "missing": missing, "lag_s": lag, "cpu_s": cpu, "pdus_received": pdus1 - pdus0,
                  "transactions": txns1 - txns0, "listening_s": listening_s,
                  "backlog": len(backlog), "backlog_s": all_s, "backlog_cpu_s": all_cpu,
                  "backlog_missing": backlog_missing,
                  "nudged_at_s": nudged_at, "after_nudge_s": None if nudged_at is None else lag - nudged_at}
        if not ok:
            # Later phases need a clean slate: wait out the rest (or give up on it).
            await self.remotes.wait(self.args.restart_timeout)
        return result


async def run_target(label: str, args: argparse.Namespace, ca: TestCA, workdir: Path, base_dsn: str,
                     profiler: Profiler) -> dict[str, Any]:
    # The fake servers bind their ports first: the target's ports, picked free when its config is
    # written, then cannot be among them.
    remotes = ManyRemotes(ca, workdir / f"remotes-{label}", args.servers)
    began = time.perf_counter()
    await remotes.start()
    print(f"{label}: {args.servers} fake servers listening after {time.perf_counter() - began:.1f} s", flush=True)
    redis = ThrowawayRedis()
    redis_url = redis.start()
    target: HsTarget | SynapseTarget | None = None
    dsn: str | None = None
    results: dict[str, Any] = {}
    try:
        if label == "hs":
            dsn = await create_database(base_dsn)
            target = HsTarget(workdir / "hs", ca, dsn, redis_url)
        else:
            dsn = await create_synapse_database(base_dsn)
            (workdir / "synapse").mkdir(parents=True, exist_ok=True)
            target = SynapseTarget(workdir / "synapse", ca, dsn, redis_url)
        await target.start()
        run = Run(target, remotes, args)
        results["setup"] = setup = await run.setup()
        print(f"{label}: {args.rooms} rooms in {setup['rooms_s']:.1f} s, {args.servers} joins in "
              f"{setup['joins_s']:.1f} s", flush=True)
        warm = await run.warm()
        print(f"{label}: warm-up (one message per room) delivered in {warm:.1f} s", flush=True)
        results["idle_cpu"] = await run.idle()
        print(f"{label}: sender idle: {results['idle_cpu'] * 1000:.1f} ms CPU per second", flush=True)
        for r in range(args.rounds):
            steady = await run.steady(profiler if r == 0 else Profiler(None))
            results.setdefault("steady", []).append(steady)
            print(f"{label}: steady, {steady['messages']} messages -> {steady['deliveries']} deliveries: PUTs took "
                  f"{steady['sent_s']:.1f} s, delivered after {steady['wall_s']:.1f} s; sender CPU "
                  f"{steady['cpu_s']:.2f} s = {steady['cpu_us_per_delivery']:.0f} us per delivery "
                  f"({steady['pdus_received']} PDUs in {steady['transactions']} transactions)", flush=True)
            await asyncio.sleep(1)
            restart = await run.restart(profiler if r == 0 else Profiler(None))
            results.setdefault("restart", []).append(restart)
            state = "drained" if restart["drained"] else f"NOT drained ({restart['missing']} missing)"
            if restart["nudged_at_s"] is not None:
                state = (f"nothing delivered {restart['nudged_at_s']:.0f} s after spawn, so one more message sent; "
                         f"{state} {restart['after_nudge_s']:.1f} s after that message,")
            print(f"{label}: restart, {restart['messages']} messages sent while down ({restart['sent_while_down_s']:.1f} s), "
                  f"{restart['owed']} newest-of-room deliveries owed: {state} {restart['lag_s']:.1f} s after spawn; "
                  f"sender CPU {restart['cpu_s']:.2f} s; {restart['pdus_received']} PDUs in "
                  f"{restart['transactions']} transactions", flush=True)
            if restart["backlog_s"] is not None:
                print(f"{label}: restart, the whole backlog ({restart['backlog']} deliveries) in {restart['backlog_s']:.1f} s "
                      f"after spawn, sender CPU {restart['backlog_cpu_s']:.2f} s", flush=True)
            else:
                print(f"{label}: restart, the whole backlog ({restart['backlog']} deliveries): {restart['backlog_missing']} "
                      f"still missing {args.backlog_timeout:.0f} s after the newest had arrived", flush=True)
            await asyncio.sleep(2)
        if run.client is not None:
            await run.client.close()
        if remotes.unknown_requests:
            print(f"{label}: requests the fakes do not serve (404): {remotes.unknown_requests}", flush=True)
    except Exception:
        if target is not None:
            print(f"{label} failed; logs:\n{target.log_tail()}", file=sys.stderr, flush=True)
        raise
    finally:
        if target is not None:
            await target.stop()
        await remotes.stop()
        if dsn is not None:
            await drop_database(dsn)
        redis.stop()
    return results


def median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def print_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    labels = {"hs": "hs (main + 1 sender worker)", "synapse": f"Synapse {SYNAPSE_VERSION} (main + 1 sender worker)"}
    cols = [k for k in ("hs", "synapse") if k in results]

    def values(key: str, phase: str, metric: str) -> list[float]:
        return [float(r[metric]) for r in results[key].get(phase, []) if r.get(metric) is not None]

    rows: list[list[str]] = []

    def row(title: str, phase: str, metric: str, fmt: str) -> None:
        cells = []
        for k in cols:
            v = values(k, phase, metric)
            cells.append(" / ".join(fmt.format(x) for x in v) if v else "-")
        rows.append([title, *cells])

    dests, rooms = args.servers, args.rooms
    rows.append([f"{dests} destinations, {rooms} rooms: joins (s)",
                 *[f"{results[k]['setup']['joins_s']:.0f}" for k in cols]])
    rows.append(["sender idle: CPU ms per s", *[f"{results[k]['idle_cpu'] * 1000:.1f}" for k in cols]])
    pace = f"{args.rate:g}/s" if args.rate else "as fast as accepted"
    row(f"steady ({args.messages} messages, {pace}): deliveries", "steady", "deliveries", "{:.0f}")
    row("steady: sender CPU per delivery (us)", "steady", "cpu_us_per_delivery", "{:.0f}")
    row("steady: sender CPU (s)", "steady", "cpu_s", "{:.2f}")
    row("steady: last delivery after (s)", "steady", "wall_s", "{:.1f}")
    row("steady: PDUs received by the fakes", "steady", "pdus_received", "{:.0f}")
    row("steady: transactions", "steady", "transactions", "{:.0f}")
    row(f"restart ({args.per_room}/room sent while down): drained after spawn (s)", "restart", "lag_s", "{:.1f}")
    row("restart: not drained -> one more message sent at (s after spawn)", "restart", "nudged_at_s", "{:.0f}")
    row("restart: drained after that message (s)", "restart", "after_nudge_s", "{:.1f}")
    row("restart: sender CPU over that window (s)", "restart", "cpu_s", "{:.2f}")
    row("restart: whole backlog (every message at every server) after spawn (s)", "restart", "backlog_s", "{:.1f}")
    row("restart: sender CPU until then (s)", "restart", "backlog_cpu_s", "{:.2f}")
    row("restart: backlog deliveries missing at the end of the wait", "restart", "backlog_missing", "{:.0f}")
    row("restart: PDUs received by the fakes until the newest arrived", "restart", "pdus_received", "{:.0f}")
    row("restart: transactions until the newest arrived", "restart", "transactions", "{:.0f}")
    row("restart: newest-of-room deliveries still missing", "restart", "missing", "{:.0f}")
    header = ["figure", *[labels[k] for k in cols]]
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print()
    for r in table:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) + " |")


async def amain(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="hs-bench-fedsend-"))
    ca = TestCA(workdir / "ca")
    base_dsn = os.environ.get("HS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # clean up on kill
    for label in args.targets.split(","):
        results[label] = await run_target(label, args, ca, workdir, base_dsn,
                                          Profiler(args.py_spy if label == "hs" else None))
        await asyncio.sleep(2)
    print_table(results, args)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="hs,synapse")
    p.add_argument("--servers", type=int, default=1000, help="fake remote servers (destinations)")
    p.add_argument("--rooms", type=int, default=200)
    p.add_argument("--join-concurrency", type=int, default=8)
    p.add_argument("--messages", type=int, default=400, help="steady state: messages sent")
    p.add_argument("--concurrency", type=int, default=4, help="PUTs in flight")
    p.add_argument("--rate", type=float, default=0.0,
                   help="steady state: messages per second (0: as fast as the target takes them)")
    p.add_argument("--per-room", type=int, default=5, help="restart: messages per room while the sender is down")
    p.add_argument("--down-pause", type=float, default=2.0, help="seconds the sender stays down after the sends")
    p.add_argument("--restart-timeout", type=float, default=300.0)
    p.add_argument("--backlog-timeout", type=float, default=150.0,
                   help="restart: how long to wait, after the newest, for the whole backlog")
    p.add_argument("--nudge-after", type=float, default=60.0,
                   help="restart: if nothing arrived this long after spawn, send one more message and wait again")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measurement")
    p.add_argument("--rounds", type=int, default=1, help="steady + restart rounds")
    p.add_argument("--py-spy", type=Path, default=None, help="profile hs's sender into this directory")
    return asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
