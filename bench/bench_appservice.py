#!/usr/bin/env python3
"""Application service transactions, hs (monolith on PostgreSQL) vs Synapse (monolith on PostgreSQL),
same run, same workload (figures, not a test):

  .venv/bin/python bench/bench_appservice.py                          # hs and Synapse
  .venv/bin/python bench/bench_appservice.py --messages 2000 --rounds 1     # ~2 min (docs/performance.md)
  .venv/bin/python bench/bench_appservice.py --targets hs --backlog 5000 --py-spy /tmp/asprof

Both servers read the same registration file (`app_service_config_files`, Synapse's key): a service
`bench` whose user namespace is `@bench_.*` (exclusive), sender `bench_bot`, rate limits off, no
ephemeral events. Its URL points at a receiver in this process, one aiohttp server per target, that
answers every PUT /_matrix/app/v1/transactions/{txnId} with 200 at once (after checking the hs_token)
and records when each event arrived (time.perf_counter(), the clock the client's sends are timed with).

Set-up, per server: --senders users (shared-secret registration) and a public room; the senders join,
and so does the service's bot (POST /join with the as_token, no user_id: the service acting as its
sender), so every event of the room interests the service. 20 warm-up messages are delivered first.

Workloads:
  throughput: the senders PUT --messages messages into the room as fast as they can, --concurrency
        at a time (message i by sender i mod --senders) -> delivered events / (time from the first
        send's start until the last event reached the receiver), with the send rate and the delivery
        tail after the last send answered. --rounds rounds, the servers taking turns (hs, Synapse,
        hs, Synapse...) so they see the same load from whatever else runs on the machine.
  backlog: the receiver holds a transaction unanswered while --backlog messages are sent (keep them
        under ~45 s of Synapse's sends: both servers time a transaction out at 60 s); --settle s after
        the last send answered it answers, and the server drains the backlog -> events / time from
        the release to the last arrival. --rounds rounds, the servers taking turns.
  latency: one message at a time, one per 1/--rate s on each server (the servers alternating within
        each tick, at least --gap-ms of quiet after each message; a slower server lowers the rate):
        time from the PUT's start until the receiver has the event (whether or not the PUT has
        answered yet) -> p50/p99 over --trials messages, and the PUT's own response time.

Servers, client, receiver and PostgreSQL share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

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
    register,
)
from bench_sliding_sync import OPEN, Server, _free_port, profiled  # noqa: E402
from bench_sliding_sync import start_synapse as start_synapse_with  # noqa: E402

AS_TOKEN = "bench-as-token-" + uuid.uuid4().hex
HS_TOKEN = "bench-hs-token-" + uuid.uuid4().hex
BOT = "bench_bot"


# -- the application service -----------------------------------------------------------------------

@dataclass
class Receiver:
    """One target's application service: records each event's first arrival, keyed by its body."""

    name: str
    port: int = field(default_factory=_free_port)
    arrivals: dict[str, float] = field(default_factory=dict)  # body -> perf_counter at first arrival
    waiters: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    txn_ids: set[str] = field(default_factory=set)
    txns: int = 0
    events: int = 0
    repeats: int = 0  # transactions sent again (same ID) or events seen twice
    bad_auth: int = 0
    count_prefix: str = ""  # arrivals of bodies with this prefix are counted into `counted`
    counted: int = 0
    count_target: int = 0
    counted_all: asyncio.Event = field(default_factory=asyncio.Event)
    last_counted: float = 0.0
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # cleared: transactions are held
    held: asyncio.Event = field(default_factory=asyncio.Event)  # a transaction waits at the gate
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.gate.set()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_put("/_matrix/app/v1/transactions/{txn}", self._txn)
        app.router.add_route("*", "/{tail:.*}", self._other)  # queries, pings: nothing here
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def expect(self, prefix: str, count: int) -> None:
        self.count_prefix, self.count_target, self.counted = prefix, count, 0
        self.counted_all = asyncio.Event()
        self.last_counted = 0.0

    def wait_for(self, body: str) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if body in self.arrivals:
            fut.set_result(self.arrivals[body])
        else:
            self.waiters[body] = fut
        return fut

    async def _txn(self, request: web.Request) -> web.Response:
        t = time.perf_counter()
        auth = request.headers.get("Authorization") or ""
        if auth != f"Bearer {HS_TOKEN}" and request.query.get("access_token") != HS_TOKEN:
            self.bad_auth += 1
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        body = await request.json()
        txn = request.match_info["txn"]
        if txn in self.txn_ids:
            self.repeats += 1
            return web.json_response({})
        if not self.gate.is_set():
            self.held.set()
            await self.gate.wait()
            t = time.perf_counter()
        self.txn_ids.add(txn)
        self.txns += 1
        for event in body.get("events", ()):
            self.events += 1
            text = (event.get("content") or {}).get("body")
            if not isinstance(text, str):
                continue
            if text in self.arrivals:
                self.repeats += 1
                continue
            self.arrivals[text] = t
            waiter = self.waiters.pop(text, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(t)
            if self.count_prefix and text.startswith(self.count_prefix):
                self.counted += 1
                self.last_counted = t
                if self.counted >= self.count_target:
                    self.counted_all.set()
        return web.json_response({})

    async def _other(self, request: web.Request) -> web.Response:
        return web.json_response({})


def write_registration(path: Path, receiver: Receiver) -> None:
    path.write_text(yaml.safe_dump({
        "id": "bench", "url": receiver.url, "as_token": AS_TOKEN, "hs_token": HS_TOKEN,
        "sender_localpart": BOT, "rate_limited": False,
        "namespaces": {"users": [{"regex": "@bench_.*", "exclusive": True}], "aliases": [], "rooms": []},
    }))


# -- servers ---------------------------------------------------------------------------------------

def start_hs(workdir: Path, registration: Path, env: dict[str, str], wrapper: list[str]) -> Server:
    """hs on PostgreSQL (a fresh database), rate limits off, the service registered."""
    d = workdir / "hs"
    d.mkdir(parents=True, exist_ok=True)
    cfg_path = d / "homeserver.yaml"
    subprocess.run([sys.executable, "-m", "hs.cli", "generate-config", "--server-name", "bench.local",
                    "--config-path", str(cfg_path), "--data-dir", str(d), "--force"], check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    cfg = yaml.safe_load(cfg_path.read_text())
    port = _free_port()
    cfg["listeners"] = [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "resources": ["client"]}]
    cfg["database"] = {"engine": "postgres", "dsn": pg_dsn(_create_pg_database("hs_bench_as_"))}
    cfg["bcrypt_rounds"] = 4
    for key in ("rc_message", "rc_registration"):
        cfg[key] = OPEN
    cfg["rc_login"] = {"address": OPEN, "account": OPEN, "failed_attempts": OPEN}
    cfg["rc_joins"] = {"local": OPEN, "remote": OPEN}
    cfg["app_service_config_files"] = [str(registration)]
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


def start_synapse(workdir: Path, registration: Path) -> Server:
    """Synapse as bench_sliding_sync.py starts it, with the service registered (Synapse sends its
    transactions from the main process by default)."""
    return start_synapse_with(workdir, "synapse_bench_as_", {"app_service_config_files": [str(registration)]})


# -- set-up ----------------------------------------------------------------------------------------

@dataclass
class Target:
    server: Server
    receiver: Receiver
    senders: list[User]
    room_id: str
    throughput: list[dict[str, float]] = field(default_factory=list)
    backlog: list[dict[str, float]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    puts: list[float] = field(default_factory=list)  # the latency sends' own response times
    lost: int = 0


async def send(u: User, room_id: str, body: str) -> None:
    await u.call("PUT", f"/rooms/{room_id}/send/m.room.message/{uuid.uuid4().hex}",
                 {"msgtype": "m.text", "body": body})


async def set_up(s: aiohttp.ClientSession, server: Server, receiver: Receiver, senders: int) -> Target:
    tag = uuid.uuid4().hex[:6]
    users = [await register(s, server.base, server.secret, f"snd{tag}{i}") for i in range(senders)]
    room_id = (await users[0].call("POST", "/createRoom", {"preset": "public_chat", "name": "bench"}))["room_id"]
    for u in users[1:]:
        await u.call("POST", f"/join/{room_id}", {})
    bot = User(s, server.base, AS_TOKEN, f"@{BOT}:bench.local")
    await bot.call("POST", f"/join/{room_id}", {})
    target = Target(server, receiver, users, room_id)
    # Warm-up: the service's first transactions, the servers' caches for the room.
    receiver.expect("warm ", 20)
    await asyncio.gather(*(send(users[i % senders], room_id, f"warm {i}") for i in range(20)))
    await asyncio.wait_for(receiver.counted_all.wait(), 60)
    return target


# -- workloads -------------------------------------------------------------------------------------

async def throughput_round(t: Target, r: int, messages: int, concurrency: int, timeout: float) -> None:
    prefix = f"tp{r} "
    t.receiver.expect(prefix, messages)
    txns_before = t.receiver.txns
    todo = iter(range(messages))
    last_send_end = [0.0]

    async def worker() -> None:
        for i in todo:
            await send(t.senders[i % len(t.senders)], t.room_id, f"{prefix}{i}")
            last_send_end[0] = time.perf_counter()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    try:
        await asyncio.wait_for(t.receiver.counted_all.wait(), timeout)
    except TimeoutError:
        pass
    delivered = t.receiver.counted
    end = t.receiver.last_counted or time.perf_counter()
    txns = t.receiver.txns - txns_before
    t.throughput.append({"delivered": delivered, "events_per_s": delivered / (end - t0), "txns": txns,
                         "send_per_s": messages / (last_send_end[0] - t0),
                         "tail_ms": (end - last_send_end[0]) * 1000, "elapsed_s": end - t0})
    print(f"  {t.server.name} round {r + 1}: {delivered}/{messages} delivered, "
          f"{delivered / (end - t0):.0f} events/s (sends {messages / (last_send_end[0] - t0):.0f}/s, "
          f"last delivery {(end - last_send_end[0]) * 1000:.0f} ms after the last send answered; "
          f"{txns} transactions, {delivered / max(1, txns):.1f} events each)", flush=True)


async def backlog_round(t: Target, r: int, messages: int, concurrency: int, timeout: float,
                        settle: float) -> None:
    """The service stalls (its receiver holds a transaction unanswered) while `messages` are sent; once
    all are answered and `settle` seconds have passed, the transaction is answered, and the server sends the backlog as fast as it
    makes transactions: delivered events / time from the release to the last arrival."""
    rc = t.receiver
    rc.gate.clear()
    rc.held.clear()
    await send(t.senders[0], t.room_id, f"gate {r}")
    await asyncio.wait_for(rc.held.wait(), timeout)
    prefix = f"bl{r} "
    rc.expect(prefix, messages)
    todo = iter(range(messages))

    async def worker() -> None:
        for i in todo:
            await send(t.senders[i % len(t.senders)], t.room_id, f"{prefix}{i}")

    t_sends = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    # Let the server finish what the sends left behind (notification counts, push), so that the drain
    # measures the transactions alone.
    await asyncio.sleep(settle)
    t0 = time.perf_counter()
    if t0 - t_sends > 45:
        print(f"  {t.server.name}: the sends took {t0 - t_sends:.0f} s: the held transaction may time out "
              f"(60 s on both servers) and the figure include a retry's backoff", flush=True)
    rc.gate.set()
    try:
        await asyncio.wait_for(rc.counted_all.wait(), timeout)
    except TimeoutError:
        pass
    end = rc.last_counted or time.perf_counter()
    t.backlog.append({"delivered": rc.counted, "events_per_s": rc.counted / (end - t0)})
    print(f"  {t.server.name} backlog {r + 1}: {rc.counted}/{messages} delivered in {(end - t0) * 1000:.0f} ms "
          f"after the release: {rc.counted / (end - t0):.0f} events/s", flush=True)


async def latency_trial(t: Target, i: int, timeout: float) -> None:
    body = f"lat {i} {uuid.uuid4().hex}"
    arrived = t.receiver.wait_for(body)
    t0 = time.perf_counter()
    await send(t.senders[i % len(t.senders)], t.room_id, body)
    t.puts.append(time.perf_counter() - t0)
    try:
        t1 = await asyncio.wait_for(arrived, timeout)
    except TimeoutError:
        t.lost += 1
        t.receiver.waiters.pop(body, None)
        return
    t.latencies.append(t1 - t0)


async def run_all(servers: list[Server], receivers: dict[str, Receiver], args: argparse.Namespace) -> list[Target]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:
        targets = [await set_up(s, srv, receivers[srv.name], args.senders) for srv in servers]
        await asyncio.sleep(args.settle)
        hs_server = next((t.server for t in targets if t.server.name == "hs"), None)
        with profiled(hs_server if len(targets) == 1 else None, args.py_spy, "throughput"):
            for r in range(args.rounds):
                for t in targets:
                    await throughput_round(t, r, args.messages, args.concurrency, args.timeout)
                    await asyncio.sleep(args.settle)
        with profiled(hs_server if len(targets) == 1 else None, args.py_spy, "backlog"):
            for r in range(args.rounds if args.backlog else 0):
                for t in targets:
                    await backlog_round(t, r, args.backlog, args.concurrency, args.timeout, args.settle)
                    await asyncio.sleep(args.settle)
        with profiled(hs_server if len(targets) == 1 else None, args.py_spy, "latency"):
            tick = 1.0 / args.rate
            next_at = time.perf_counter()
            for i in range(args.trials):
                for t in targets:
                    await latency_trial(t, i, args.timeout)
                    # A quiet gap, so that the next server's trial does not share the machine with
                    # what this one still does after the delivery (acknowledging the transaction).
                    await asyncio.sleep(args.gap_ms / 1000)
                next_at += tick
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    return targets


def report(t: Target) -> dict[str, float]:
    rates = [x["events_per_s"] for x in t.throughput]
    backlog = [x["events_per_s"] for x in t.backlog]
    out = {"events_per_s_best": max(rates), "events_per_s_mean": sum(rates) / len(rates),
           "backlog_per_s_mean": sum(backlog) / len(backlog) if backlog else float("nan"),
           "p50_ms": pct(t.latencies, 50) * 1000, "p99_ms": pct(t.latencies, 99) * 1000,
           "max_ms": max(t.latencies) * 1000 if t.latencies else float("nan"),
           "put_p50_ms": pct(t.puts, 50) * 1000}
    rc = t.receiver
    print(f"  {t.server.name}: throughput {', '.join(f'{x:.0f}' for x in rates)} events/s over the rounds; "
          f"backlog {', '.join(f'{x:.0f}' for x in backlog) or '-'} events/s; latency p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms, max {out['max_ms']:.1f} ms over "
          f"{len(t.latencies)} messages (the PUT itself answered in {out['put_p50_ms']:.1f} ms, p50; {t.lost} not delivered within the timeout); {rc.txns} transactions, "
          f"{rc.events / max(1, rc.txns):.1f} events each on average, {rc.repeats} repeats, "
          f"{rc.bad_auth} refused for their hs_token", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="hs,synapse")
    ap.add_argument("--senders", type=int, default=10, help="users sending into the room")
    ap.add_argument("--messages", type=int, default=2000, help="messages per throughput round")
    ap.add_argument("--concurrency", type=int, default=20, help="sends in flight in the throughput rounds")
    ap.add_argument("--rounds", type=int, default=2, help="throughput rounds per server (taking turns)")
    ap.add_argument("--backlog", type=int, default=800,
                    help="messages sent while the service stalls, per round (0: no backlog workload)")
    ap.add_argument("--trials", type=int, default=200, help="latency messages per server")
    ap.add_argument("--rate", type=float, default=20.0, help="latency messages per second per server")
    ap.add_argument("--gap-ms", type=float, default=10.0, help="quiet after each latency message")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for deliveries")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds of quiet between phases")
    ap.add_argument("--hs-env", action="append", default=[], metavar="KEY=VALUE", help="environment for hs")
    ap.add_argument("--hs-wrapper", default="", help="a command hs runs under")
    ap.add_argument("--py-spy", default="", metavar="DIR",
                    help="profile hs with py-spy during each phase (with --targets hs only)")
    args = ap.parse_args()
    hs_env = dict(item.split("=", 1) for item in args.hs_env)

    commit = subprocess.run(["git", "log", "-1", "--format=%h"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"hs at {commit}; {args.senders} senders, {args.messages} messages x {args.rounds} rounds at "
          f"concurrency {args.concurrency}; latency {args.trials} messages at {args.rate:g}/s; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="hs-bench-as-"))
    servers: list[Server] = []
    names = args.targets.split(",")

    async def go() -> list[Target]:
        receivers = {name: Receiver(name) for name in names}
        for rc in receivers.values():
            await rc.start()
        try:
            for name in names:
                reg = workdir / f"registration-{name}.yaml"
                write_registration(reg, receivers[name])
                # Starting a server blocks (it waits for the server to answer): in a thread, so the
                # receivers keep answering meanwhile.
                if name == "hs":
                    servers.append(await asyncio.to_thread(start_hs, workdir, reg, hs_env, args.hs_wrapper.split()))
                else:
                    servers.append(await asyncio.to_thread(start_synapse, workdir, reg))
            return await run_all(servers, receivers, args)
        finally:
            for rc in receivers.values():
                await rc.stop()

    try:
        targets = asyncio.run(go())
    finally:
        for server in servers:
            server.stop()
        _drop_created_databases()
    results = {t.server.name: report(t) for t in targets}
    print(f"(load average after it: {os.getloadavg()[0]:.1f})", flush=True)
    hs, syn = results.get("hs"), results.get("synapse")
    if hs and syn:
        print(f"hs / Synapse throughput (mean of rounds): {hs['events_per_s_mean'] / syn['events_per_s_mean']:.1f}x; "
              f"backlog {hs['backlog_per_s_mean'] / syn['backlog_per_s_mean']:.1f}x; "
              f"Synapse / hs latency: p50 {syn['p50_ms'] / hs['p50_ms']:.1f}x, p99 {syn['p99_ms'] / hs['p99_ms']:.1f}x")
    print(f"logs in {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
