#!/usr/bin/env python3
"""Send throughput and /sync wake-up latency, on SQLite and PostgreSQL (figures, not a test).

  .venv/bin/python bench/bench_send_sync.py                      # start hs on sqlite and postgres
  .venv/bin/python bench/bench_send_sync.py --engines postgres
  .venv/bin/python bench/bench_send_sync.py --synapse              # also Synapse from PyPI, same workload
  .venv/bin/python bench/bench_send_sync.py --target http://127.0.0.1:8008 --shared-secret S
        # any running homeserver with Synapse's shared-secret admin registration (Synapse included)

Workloads:
  send: 16 concurrent senders PUT messages into one room for --duration seconds -> events/s, p50/p99.
  wake: a receiver long-polls /sync; a sender PUTs a message; time from the PUT starting until the
        receiver's /sync returns with it -> p50/p99 over --trials trials; measured twice, with aiohttp's
        client and with a minimal HTTP client (bench/rawhttp.py) whose own CPU time adds less to the
        figure on a machine where client, server and database share two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from rawhttp import RawHttpClient

ROOT = Path(__file__).resolve().parent.parent
HS_BIN = ROOT / ".venv" / "bin" / "hs"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class User:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str, user_id: str) -> None:
        self.s, self.base, self.token, self.user_id = session, base, token, user_id

    async def call(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        async with self.s.request(method, self.base + "/_matrix/client/v3" + path, json=body, params=params,
                                  headers={"Authorization": f"Bearer {self.token}"}) as r:
            data = await r.json(content_type=None)
            if r.status != 200:
                raise RuntimeError(f"{method} {path}: {r.status} {data}")
            return data


async def register(session: aiohttp.ClientSession, base: str, secret: str, name: str) -> User:
    url = base + "/_synapse/admin/v1/register"
    async with session.get(url) as r:
        nonce = (await r.json())["nonce"]
    mac = hmac.new(secret.encode(), b"\x00".join(x.encode() for x in (nonce, name, "benchpass1", "notadmin")),
                   hashlib.sha1).hexdigest()
    async with session.post(url, json={"nonce": nonce, "username": name, "password": "benchpass1",
                                       "admin": False, "mac": mac}) as r:
        data = await r.json()
        if r.status != 200:
            raise RuntimeError(f"register {name}: {data}")
    return User(session, base, data["access_token"], data["user_id"])


async def bench_send(users: list[User], room_id: str, duration: float) -> dict[str, float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration

    async def sender(u: User) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await u.call("PUT", f"/rooms/{room_id}/send/m.room.message/{uuid.uuid4().hex}",
                         {"msgtype": "m.text", "body": "benchmark"})
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(sender(u) for u in users))
    elapsed = time.perf_counter() - t0
    return {"events": len(latencies), "events_per_s": len(latencies) / elapsed,
            "p50_ms": pct(latencies, 50) * 1000, "p99_ms": pct(latencies, 99) * 1000}


async def bench_wake(sender: User | RawHttpClient, receiver: User | RawHttpClient, room_id: str,
                     trials: int, idle_s: float = 0.05) -> dict[str, float]:
    async def long_poll(since: str) -> tuple[Any, float]:
        """A /sync long-poll and the moment it returned (which may be before the sender's PUT does)."""
        result = await receiver.call("GET", "/sync", params={"timeout": "30000", "since": since})
        return result, time.perf_counter()

    since = (await receiver.call("GET", "/sync", params={"timeout": "0"}))["next_batch"]
    latencies, puts = [], []
    for i in range(trials):
        body = f"wake {i} {uuid.uuid4().hex}"
        poll = asyncio.create_task(long_poll(since))
        # Let the long-poll park on the server. The machine idles meanwhile, and the wake-up pays for
        # that: halted cores and cold caches (see docs/performance.md, "What the machine costs").
        await asyncio.sleep(idle_s)
        t0 = time.perf_counter()
        await sender.call("PUT", f"/rooms/{room_id}/send/m.room.message/{uuid.uuid4().hex}",
                          {"msgtype": "m.text", "body": body})
        puts.append(time.perf_counter() - t0)
        while True:
            result, t1 = await poll
            since = result["next_batch"]
            events = result.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", [])
            if any(e.get("content", {}).get("body") == body for e in events):
                break
            poll = asyncio.create_task(long_poll(since))
        latencies.append(t1 - t0)
    return {"trials": trials, "p50_ms": pct(latencies, 50) * 1000, "p99_ms": pct(latencies, 99) * 1000,
            "put_p50_ms": pct(puts, 50) * 1000}


async def bench_fanout(base: str, secret: str, s: aiohttp.ClientSession, receivers: int, updates: int,
                       ) -> dict[str, Any]:
    """`receivers` users long-poll /sync in one room; one user alternately types and sends. For each
    update: the time from the request starting until every receiver's /sync has returned with it."""
    tag = uuid.uuid4().hex[:6]
    sender = await register(s, base, secret, f"fan{tag}s")
    users = [await register(s, base, secret, f"fan{tag}r{i}") for i in range(receivers)]
    room = (await sender.call("POST", "/createRoom", {"preset": "public_chat", "name": "fanout"}))["room_id"]
    for u in users:
        await u.call("POST", f"/join/{room}", {})
    seen: dict[str, dict[int, float]] = {u.user_id: {} for u in users}
    typing_round = [0]  # the key typing notifications are recorded under (negative, per round)
    stop = asyncio.Event()

    async def receive(u: User) -> None:
        since = (await u.call("GET", "/sync", params={"timeout": "0"}))["next_batch"]
        while not stop.is_set():
            body = await u.call("GET", "/sync", params={"timeout": "5000", "since": since})
            since = body["next_batch"]
            t = time.perf_counter()
            joined = body.get("rooms", {}).get("join", {}).get(room, {})
            for e in joined.get("timeline", {}).get("events", []):
                marker = e.get("content", {}).get("body", "")
                if marker.startswith("fan "):
                    seen[u.user_id].setdefault(int(marker.split()[1]), t)
            for e in joined.get("ephemeral", {}).get("events", []):
                if e.get("type") == "m.typing" and sender.user_id in e.get("content", {}).get("user_ids", []):
                    # Typing update n is the n-th round in which the sender started typing.
                    seen[u.user_id].setdefault(typing_round[0], t)

    tasks = [asyncio.create_task(receive(u)) for u in users]
    await asyncio.sleep(1.0)
    typing_times: list[float] = []
    message_times: list[float] = []
    misses: list[tuple[int, int]] = []  # (update, receivers that did not see it within 10 s)
    for i in range(updates):
        t0 = time.perf_counter()
        if i % 2 == 0:
            key = typing_round[0] = -(i // 2) - 1
            await sender.call("PUT", f"/rooms/{room}/typing/{sender.user_id}", {"typing": True, "timeout": 30000})
        else:
            await sender.call("PUT", f"/rooms/{room}/send/m.room.message/{uuid.uuid4().hex}",
                              {"msgtype": "m.text", "body": f"fan {i}"})
            key = i
        deadline = time.perf_counter() + 10
        while time.perf_counter() < deadline and not all(key in v for v in seen.values()):
            await asyncio.sleep(0.001)
        done = max(v.get(key, float("inf")) for v in seen.values())
        missed = [u for u, v in seen.items() if key not in v]
        if missed:
            misses.append((key, len(missed)))
        (typing_times if i % 2 == 0 else message_times).append(done - t0)
        if i % 2 == 0:
            typing_round[0] = 0  # a "stopped typing" or repeated notification is not the next round's
            await sender.call("PUT", f"/rooms/{room}/typing/{sender.user_id}", {"typing": False})
            await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"typing_p50_ms": pct(typing_times, 50) * 1000, "typing_p99_ms": pct(typing_times, 99) * 1000,
            "message_p50_ms": pct(message_times, 50) * 1000, "message_p99_ms": pct(message_times, 99) * 1000,
            "misses": misses}


async def run_workloads(base: str, secret: str, senders: int, duration: float, trials: int,
                        fanout: int = 0, idle_ms: float = 50) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:
        users = [await register(s, base, secret, f"bench{tag}{i}") for i in range(senders + 1)]
        owner = users[0]
        room = await owner.call("POST", "/createRoom", {"preset": "public_chat", "name": "bench"})
        room_id = room["room_id"]
        for u in users[1:]:
            await u.call("POST", f"/join/{room_id}", {})
        send = await bench_send(users[1:], room_id, duration)
        wake = await bench_wake(users[1], owner, room_id, trials, idle_ms / 1000)
        raw_sender, raw_receiver = RawHttpClient(base, users[1].token), RawHttpClient(base, owner.token)
        try:
            wake_raw = await bench_wake(raw_sender, raw_receiver, room_id, trials, idle_ms / 1000)
        finally:
            await raw_sender.close()
            await raw_receiver.close()
        result: dict[str, Any] = {"send": send, "wake": wake, "wake_raw": wake_raw}
        if fanout:
            result["fanout"] = await bench_fanout(base, secret, s, fanout, 40)
        return result


def start_hs(engine: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port = 18008 + (1 if engine == "postgres" else 0)
    cfg = workdir / f"{engine}.yaml"
    subprocess.run([str(HS_BIN), "generate-config", "--server-name", "bench.local", "--config-path", str(cfg),
                    "--data-dir", str(workdir / engine), "--force"], check=True, stdout=subprocess.DEVNULL)
    text = cfg.read_text().replace("port: 8008", f"port: {port}").replace("port: 9000", f"port: {port + 1000}")
    open_limits = "{per_second: 100000, burst_count: 100000}"
    for key in ("rc_message", "rc_registration"):
        text = text.replace(f"{key}: {{per_second: 0.2, burst_count: 10}}", f"{key}: {open_limits}")
        text = text.replace(f"{key}: {{per_second: 0.17, burst_count: 3}}", f"{key}: {open_limits}")
    text = text.replace("{per_second: 0.003, burst_count: 5}", open_limits).replace(
        "{per_second: 0.17, burst_count: 3}", open_limits)
    if engine == "postgres":
        dbname = _create_pg_database("hs_bench_")
        start = text.index("\ndatabase:\n") + 1
        end = text.index("signing_key_path")
        text = text[:start] + f"database:\n  engine: postgres\n  dsn: {pg_dsn(dbname)}\n\n" + text[end:]
    secret = text.split('registration_shared_secret: "')[1].split('"')[0]
    text += "\nbcrypt_rounds: 4\n"
    cfg.write_text(text)
    proc = subprocess.Popen([str(HS_BIN), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            import urllib.request

            urllib.request.urlopen(base + "/_matrix/client/versions", timeout=1)
            break
        except Exception:
            time.sleep(0.1)
    return proc, base, secret


SYNAPSE_VENV = Path(os.environ.get("HS_BENCH_SYNAPSE_VENV", Path.home() / ".cache" / "hs-bench" / "synapse-venv"))


CREATED_DATABASES: list[str] = []
PG_SOCKET_DIR = "/var/run/postgresql"


def pg_host() -> str:
    """Where the servers under test reach PostgreSQL: its Unix socket when it runs on this machine (as
    a local deployment would; a round trip is ~0.1 ms shorter than over TCP here), else TCP."""
    return PG_SOCKET_DIR if os.path.exists(f"{PG_SOCKET_DIR}/.s.PGSQL.5432") else "127.0.0.1"


def pg_dsn(dbname: str) -> str:
    host = pg_host()
    if host.startswith("/"):
        return f"postgresql://postgres@/{dbname}?host={host}"
    return f"postgresql://postgres@{host}/{dbname}"


def _drop_created_databases() -> None:
    for name in CREATED_DATABASES:
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _create_pg_database(prefix: str) -> str:
    name = prefix + uuid.uuid4().hex[:8]
    CREATED_DATABASES.append(name)
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c",
                    f"CREATE DATABASE {name} ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' TEMPLATE template0"],
                   check=True, stdout=subprocess.DEVNULL)
    return name


def _wait_http(base: str, seconds: float = 60) -> None:
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "/_matrix/client/versions", timeout=1)
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"{base} did not come up")


def start_synapse(engine: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """Synapse from PyPI in its own virtualenv (created on first use), rate limits raised."""
    import yaml

    py = SYNAPSE_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(SYNAPSE_VENV)], check=True)
        subprocess.run([str(SYNAPSE_VENV / "bin" / "pip"), "install", "-q", "matrix-synapse[postgres]"], check=True)
    d = workdir / f"synapse-{engine}"
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "homeserver.yaml"
    subprocess.run([str(py), "-m", "synapse.app.homeserver", "--server-name", "bench.local", "--config-path",
                    str(cfg), "--generate-config", "--report-stats=no", "--data-directory", str(d)],
                   check=True, stdout=subprocess.DEVNULL, cwd=d)
    conf = yaml.safe_load(cfg.read_text())
    port = 18108 + (1 if engine == "postgres" else 0)
    conf["listeners"] = [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                          "x_forwarded": True, "resources": [{"names": ["client"], "compress": False}]}]
    if engine == "postgres":
        conf["database"] = {"name": "psycopg2", "args": {"user": "postgres", "host": pg_host(),
                                                         "database": _create_pg_database("synapse_bench_"),
                                                         "cp_min": 5, "cp_max": 10}}
    secret = uuid.uuid4().hex
    conf["registration_shared_secret"] = secret
    unlimited = {"per_second": 100000, "burst_count": 100000}
    for key in ("rc_message", "rc_registration", "rc_joins_per_room", "rc_presence", "rc_delayed_event_mgmt"):
        conf[key] = dict(unlimited)
    conf["rc_login"] = {"address": unlimited, "account": unlimited, "failed_attempts": unlimited}
    conf["rc_joins"] = {"local": unlimited, "remote": unlimited}
    conf["trusted_key_servers"] = []
    conf["suppress_key_server_warning"] = True
    conf["enable_metrics"] = False
    conf["bcrypt_rounds"] = 4
    cfg.write_text(yaml.safe_dump(conf))
    proc = subprocess.Popen([str(py), "-m", "synapse.app.homeserver", "-c", str(cfg)], cwd=d,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    _wait_http(base, 120)
    return proc, base, secret


def start_cluster(engine: str, workdir: Path) -> tuple[Any, str, str]:
    """The reference cluster (hs.localcluster) on PostgreSQL + Redis behind nginx."""
    import socket

    import yaml

    sys.path.insert(0, str(ROOT))
    from hs.events.signing import SigningKey, write_signing_key_file
    from hs.localcluster import LocalCluster, local_cluster_config

    if engine != "postgres":
        raise SystemExit("the cluster runs on PostgreSQL only")
    with socket.socket() as s:
        redis_up = s.connect_ex(("127.0.0.1", 6379)) == 0
    if not redis_up:
        raise SystemExit("the cluster benchmark needs Redis on 127.0.0.1:6379")
    d = workdir / "cluster"
    d.mkdir(parents=True, exist_ok=True)
    dsn = pg_dsn(_create_pg_database('hs_bench_cluster_'))
    cfg = local_cluster_config(dsn, f"redis://127.0.0.1:6379/{int(uuid.uuid4().int % 15) + 1}", "bench-secret",
                               rate_limit=100000)
    cfg["bcrypt_rounds"] = 4
    (d / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    write_signing_key_file(d / "signing.key", SigningKey.generate())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = LocalCluster(d / "cluster.yaml", proxy_port=port, workdir=d)
    cluster.start()

    class Handle:
        def terminate(self) -> None:
            cluster.stop()

        def wait(self, timeout: float | None = None) -> int:
            return 0

    return Handle(), cluster.base_url, "shared-secret"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default="sqlite,postgres")
    ap.add_argument("--target", help="benchmark an already running server instead")
    ap.add_argument("--shared-secret", default=os.environ.get("BENCH_SHARED_SECRET", ""))
    ap.add_argument("--senders", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--idle-ms", type=float, default=50,
                    help="how long the machine idles before each wake-up trial (the long-poll parks meanwhile)")
    ap.add_argument("--synapse", action="store_true", help="also run the workload against Synapse")
    ap.add_argument("--fanout", type=int, default=0, metavar="N",
                    help="also measure fan-out to N long-polling users (typing and messages)")
    ap.add_argument("--cluster", action="store_true",
                    help="also run it against the reference hs cluster (PostgreSQL + Redis + nginx)")
    args = ap.parse_args()
    if args.target:
        res = asyncio.run(run_workloads(args.target, args.shared_secret, args.senders, args.duration, args.trials,
                                        idle_ms=args.idle_ms))
        print(f"target {args.target}: {res}")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="hs-bench-"))
    servers: list[tuple[str, Any]] = [("hs", start_hs)]
    if args.cluster:
        servers.append(("hs-cluster", start_cluster))
    if args.synapse:
        servers.append(("synapse", start_synapse))
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for (label, starter), engine in ((srv, e) for srv in servers for e in args.engines.split(",")):
        if label == "hs-cluster" and engine != "postgres":
            continue
        proc, base, secret = starter(engine, workdir)
        try:
            res = asyncio.run(run_workloads(base, secret, args.senders, args.duration, args.trials, args.fanout,
                                            args.idle_ms))
        finally:
            proc.terminate()
            proc.wait(10)
        results[(label, engine)] = res
        send, wake = res["send"], res["wake"]
        print(f"{label}/{engine}: send {send['events_per_s']:.0f} events/s ({send['events']} events, "
              f"p50 {send['p50_ms']:.1f} ms, p99 {send['p99_ms']:.1f} ms); "
              f"sync wake-up p50 {wake['p50_ms']:.2f} ms, p99 {wake['p99_ms']:.2f} ms"
              f" (its PUT alone: p50 {wake['put_p50_ms']:.2f} ms)", flush=True)
        raw = res["wake_raw"]
        print(f"{label}/{engine}: sync wake-up with the minimal client: p50 {raw['p50_ms']:.2f} ms,"
              f" p99 {raw['p99_ms']:.2f} ms (its PUT alone: p50 {raw['put_p50_ms']:.2f} ms)", flush=True)
        if "fanout" in res:
            f = res["fanout"]
            print(f"{label}/{engine}: fan-out to {args.fanout} long-polls: typing p50 {f['typing_p50_ms']:.1f} ms"
                  f" p99 {f['typing_p99_ms']:.1f} ms; message p50 {f['message_p50_ms']:.1f} ms"
                  f" p99 {f['message_p99_ms']:.1f} ms; updates not seen by everyone within 10 s: {f['misses']}",
                  flush=True)
    _drop_created_databases()
    mono, clus = results.get(("hs", "postgres")), results.get(("hs-cluster", "postgres"))
    if mono and clus:
        print(f"cluster/monolith send throughput on postgres: "
              f"{clus['send']['events_per_s'] / mono['send']['events_per_s']:.2f}x")
    syn = results.get(("synapse", "postgres"))
    if mono and syn:
        print(f"hs/synapse send throughput on postgres: "
              f"{mono['send']['events_per_s'] / syn['send']['events_per_s']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
