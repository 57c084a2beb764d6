"""The `hs` command: run | generate-config | generate-keys | check-config | migrate | register-user | routes |
local-cluster."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hashlib
import hmac
import logging
import secrets
import sys
from pathlib import Path

from hs.config import ConfigError, HomeserverConfig, load_config
from hs.events.signing import SigningKey, write_signing_key_file

# The metrics listener's port is the client port plus this (9000 beside the default 8008).
METRICS_OFFSET = 992

CONFIG_TEMPLATE = """\
# hs homeserver configuration. Key names follow Synapse's, so its documentation applies.

# The domain in your users' IDs (@alice:{server_name}). It cannot be changed later.
server_name: "{server_name}"

# Where clients and other servers reach this server (used in .well-known and emails).
public_baseurl: "http://localhost:{port}/"

listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    type: http
    x_forwarded: true
    resources: [client, federation]
  # Prometheus metrics; keep it off public addresses.
  - port: {metrics_port}
    bind_addresses: ["127.0.0.1"]
    type: metrics
  # Federation: other servers connect to port 8448 over TLS (or to 443 through a reverse proxy that
  # terminates TLS, with https://{server_name}/.well-known/matrix/server naming it):
  #- port: 8448
  #  bind_addresses: ["0.0.0.0"]
  #  tls: true
  #  resources: [federation, keys]

# The certificate a `tls: true` listener serves (the full chain) and its key:
#tls_certificate_path: "/etc/letsencrypt/live/{server_name}/fullchain.pem"
#tls_private_key_path: "/etc/letsencrypt/live/{server_name}/privkey.pem"
# Notaries vouching for other servers' signing keys (Synapse's default is matrix.org; [] asks each
# server itself):
#trusted_key_servers: [{{server_name: matrix.org}}]
# Federate only with these servers, both ways (absent: every server):
#federation_domain_whitelist: [example.com]

# The embedded default. For production (and for any worker cluster) use PostgreSQL:
#   database: {{name: psycopg2, args: {{user: hs, database: hs, host: 127.0.0.1, cp_min: 5, cp_max: 10}}}}
database:
  name: sqlite3
  args:
    database: "{data_dir}/homeserver.db"

signing_key_path: "{data_dir}/{server_name}.signing.key"
media_store_path: "{data_dir}/media_store"

# Registration is closed unless you open it. Open registration without verification invites spam.
enable_registration: {enable_registration}
enable_registration_without_verification: {enable_registration}
# Lets `hs register-user` and /_synapse/admin/v1/register create accounts while registration is closed.
registration_shared_secret: "{shared_secret}"

default_room_version: "12"

# TURN servers for voice and video calls, with the shared secret of a coturn `use-auth-secret` setup:
#turn_uris: ["turn:turn.{server_name}:3478?transport=udp", "turn:turn.{server_name}:3478?transport=tcp"]
#turn_shared_secret: "..."
#turn_user_lifetime: 1h

# Rate limits (per user, or per address for login): raise them for benchmarks.
rc_message: {{per_second: 0.2, burst_count: 10}}
rc_registration: {{per_second: 0.17, burst_count: 3}}
rc_login:
  address: {{per_second: 0.003, burst_count: 5}}
  account: {{per_second: 0.003, burst_count: 5}}
  failed_attempts: {{per_second: 0.17, burst_count: 3}}
"""


def _generate_config(args: argparse.Namespace) -> int:
    out = Path(args.config_path)
    if out.exists() and not args.force:
        print(f"{out} exists; not overwriting (use --force)", file=sys.stderr)
        return 1
    data_dir = Path(args.data_dir or out.parent).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(CONFIG_TEMPLATE.format(
        server_name=args.server_name, data_dir=data_dir, shared_secret=secrets.token_urlsafe(32),
        enable_registration="true" if args.open_registration else "false", port=args.port,
        metrics_port=args.metrics_port if args.metrics_port is not None else args.port + METRICS_OFFSET))
    key_path = data_dir / f"{args.server_name}.signing.key"
    if not key_path.exists():
        write_signing_key_file(key_path, SigningKey.generate())
    print(f"wrote {out} and {key_path}")
    return 0


def _generate_keys(args: argparse.Namespace) -> int:
    """The secrets a config names by path (signing key, registration and replication secrets), written
    where missing: a docker-compose stack's first run (`docker compose run --rm main generate-keys`)."""
    cfg = _load(args.config)
    wrote: list[str] = []
    key = cfg.resolve_path(cfg.signing_key_path)
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        write_signing_key_file(key, SigningKey.generate())
        wrote.append(str(key))
    for path in (cfg.registration_shared_secret_path, cfg.worker_replication_secret_path):
        if path and not cfg.resolve_path(path).exists():
            target = cfg.resolve_path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(secrets.token_urlsafe(32) + "\n")
            target.chmod(0o600)
            wrote.append(str(target))
    print(f"wrote {', '.join(wrote)}" if wrote else "every key and secret the config names exists already")
    return 0


def client_url(cfg: HomeserverConfig) -> str:
    """Where this machine reaches the main process's client API: its first listener with `client`
    (a wildcard bind address reached on loopback)."""
    for listener in cfg.listeners:
        if "client" in listener.all_resources:
            host = next(iter(listener.bind_addresses), "127.0.0.1")
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
            host = f"[{host}]" if ":" in host else host
            return f"{'https' if listener.tls else 'http'}://{host}:{listener.port}"
    raise SystemExit("config error: listeners: no listener of main serves the client API; give --url")


def _load(path: str) -> HomeserverConfig:
    try:
        return load_config(path)
    except ConfigError as e:
        for problem in e.problems:
            print(f"config error: {problem}", file=sys.stderr)
        raise SystemExit(1) from None


def _check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    key = cfg.resolve_path(cfg.signing_key_path)
    if not key.exists():
        print(f"config error: signing_key_path: {key} does not exist", file=sys.stderr)
        return 1
    if cfg.log_config:
        from hs.logging_setup import LogConfigError, read_log_config

        try:
            read_log_config(cfg.resolve_path(cfg.log_config))
        except LogConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            return 1
    for notice in cfg.notices:  # the Synapse keys hs ignores, as start-up logs them
        print(f"notice: {notice}")
    print(f"config OK: {cfg.server_name}, {len(cfg.workers)} worker(s), database {cfg.database.engine}")
    return 0


def _run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    instance = args.role or "main"
    if instance != "main" and instance not in cfg.workers:
        print(f"config error: --role {instance!r} is not in workers", file=sys.stderr)
        return 1
    from hs.logging_setup import LogConfigError, setup_logging

    try:
        setup_logging(cfg.resolve_path(cfg.log_config) if cfg.log_config else None, cfg.log_level, instance)
    except LogConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 1
    for notice in cfg.notices:  # a Synapse feature hs lacks is a warning; a key with no effect, info
        level = logging.WARNING if "is not supported by hs" in notice else logging.INFO
        logging.getLogger("hs.config").log(level, "%s", notice)
    if cfg.app_for(instance) != "media_repository":
        # A media worker stays on asyncio's own loop: uvloop has no `loop.sendfile`, so downloads would
        # be copied through Python in chunks (more memory per download, less throughput; see the
        # media figures in docs/performance.md). Everything else gains from uvloop.
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    from hs.db.pool import DatabaseStartupError
    from hs.pidfile import PidFileInUse
    from hs.runner import run_forever

    try:
        asyncio.run(run_forever(cfg, instance))
    except (PidFileInUse, DatabaseStartupError) as e:
        print(f"cannot start: {e}", file=sys.stderr)
        return 1
    return 0


def _migrate(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from hs.db.migrations import apply_migrations
    from hs.db.pool import DatabaseStartupError, make_database

    async def go() -> int:
        db = make_database(cfg.database)
        await db.open()
        try:
            return await apply_migrations(db)
        finally:
            await db.close()

    try:
        applied = asyncio.run(go())
    except DatabaseStartupError as e:
        print(f"cannot migrate: {e}", file=sys.stderr)
        return 1
    print(f"applied {applied} migration(s)")
    return 0


def _port_db(args: argparse.Namespace) -> int:
    """Copy a stopped hs's SQLite database into the (empty) PostgreSQL database the config names."""
    cfg = _load(args.config)
    from hs.db.pool import DatabaseStartupError, make_database
    from hs.db.port import PortError, port

    async def go() -> int:
        db = make_database(cfg.database)
        await db.open()
        try:
            result = await port(args.sqlite_database, db, batch_size=args.batch_size,
                                max_batches=args.max_batches)
        finally:
            await db.close()
        if not result.complete:
            print("stopped before the end (--max-batches): run the same command again to resume",
                  file=sys.stderr)
            return 2
        if result.mismatches:
            for table, (want, got) in sorted(result.mismatches.items()):
                print(f"verification failed: {table} has {want} rows in SQLite, {got} in PostgreSQL",
                      file=sys.stderr)
            return 1
        print(f"ported {sum(result.tables.values())} row(s); row counts verified for every table")
        return 0

    try:
        return asyncio.run(go())
    except (DatabaseStartupError, PortError) as e:
        print(f"cannot port: {e}", file=sys.stderr)
        return 1


def _register_user(args: argparse.Namespace) -> int:
    """Register through the running server's shared-secret admin API, as Synapse's tool does."""
    import json
    import urllib.request

    cfg = _load(args.config)
    secret = cfg.get_registration_shared_secret()
    if not secret:
        print("config error: registration_shared_secret is not set", file=sys.stderr)
        return 1
    password = args.password or getpass.getpass("Password: ")
    base = (args.url or client_url(cfg)).rstrip("/") + "/_synapse/admin/v1/register"
    try:
        with urllib.request.urlopen(base) as r:
            nonce = json.load(r)["nonce"]
    except (OSError, ValueError, KeyError) as e:
        print(f"cannot reach {base}: {e}", file=sys.stderr)
        return 1
    body = {"nonce": nonce, "username": args.user, "password": password, "admin": args.admin}
    # The MAC covers the fields joined by NUL without a trailing NUL.
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join(p.encode() for p in (nonce, args.user, password, "admin" if args.admin else "notadmin")))
    body["mac"] = mac.hexdigest()
    req = urllib.request.Request(base, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            print(f"registered {json.load(r)['user_id']}")
    except urllib.error.HTTPError as e:
        print(f"registration failed: {e.read().decode()}", file=sys.stderr)
        return 1
    return 0


def _listen_address(value: str) -> str:
    """`--listen`: a port, or HOST:PORT ([v6]:PORT) for the proxy's own address."""
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536 or (host and not host.strip("[]")):
        raise argparse.ArgumentTypeError(f"{value!r} is not a port or HOST:PORT")
    return value


def _names(value: str) -> frozenset[str]:
    return frozenset(n.strip() for n in value.split(",") if n.strip())


def _routes(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from hs.roles.proxy import WorkerSplit, render_proxy_config

    split = WorkerSplit(args.sync_workers, args.client_workers)
    problems = split.check(cfg)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(render_proxy_config(cfg, args.format, args.listen, split), end="")
    return 0


def _local_cluster(args: argparse.Namespace) -> int:
    import signal
    import time

    from hs.localcluster import CONSOLE_HELP, LocalCluster, serve_console

    cluster = LocalCluster(args.config, proxy_port=args.listen, log_dir=args.log_dir)
    # SIGTERM while starting acts like Ctrl-C: what has started is stopped. (Handlers, unlike a blocked
    # mask or SIG_IGN, are not inherited by the instances.)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        cluster.start()
    except KeyboardInterrupt:
        print("stopped while starting", file=sys.stderr)
        return 1
    reason = "error"
    try:
        print(f"cluster of {len(cluster.instances)} instance(s) behind nginx at {cluster.base_url};"
              f" logs in {cluster.log_dir}", flush=True)
        print(CONSOLE_HELP, flush=True)
        reason = serve_console(cluster, sys.stdin.fileno() if sys.stdin is not None else None, sys.stdout)
    finally:
        began = time.monotonic()
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        cluster.stop()
        killed = f"; killed (no clean stop): {', '.join(cluster.killed)}" if cluster.killed else ""
        print(f"stopped ({reason}) in {time.monotonic() - began:.2f}s{killed}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hs", description="hs Matrix homeserver")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the main process or a worker")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--role", help="instance name from `workers` (default: main)")
    p.set_defaults(fn=_run)

    p = sub.add_parser("generate-config", help="write a commented config and a signing key")
    p.add_argument("--server-name", required=True)
    p.add_argument("--config-path", "-c", default="homeserver.yaml")
    p.add_argument("--data-dir")
    p.add_argument("--open-registration", action="store_true", help="let anybody register (for development)")
    p.add_argument("--port", type=int, default=8008, help="the client and federation listener's port")
    p.add_argument("--metrics-port", type=int, help=f"the metrics listener's port (default: --port + {METRICS_OFFSET})")
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=_generate_config)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(fn=_check_config)

    p = sub.add_parser("migrate", help="apply database migrations")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(fn=_migrate)

    p = sub.add_parser("port-db", help="copy a stopped server's SQLite database into an empty PostgreSQL one")
    p.add_argument("--sqlite-database", required=True, help="the SQLite file (the server must be stopped)")
    p.add_argument("--config", "-c", required=True, help="a config whose database is the PostgreSQL target")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--max-batches", type=int, help="stop after this many batches (resumable)")
    p.set_defaults(fn=_port_db)

    p = sub.add_parser("register-user", help="create a user through the shared-secret admin API")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--user", "-u", required=True)
    p.add_argument("--password", "-p")
    p.add_argument("--admin", action="store_true")
    p.add_argument("--url", help="the server's client API (default: main's client listener in the config)")
    p.set_defaults(fn=_register_user)

    p = sub.add_parser("generate-keys", help="write the signing key and secret files the config names, if missing")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(fn=_generate_keys)

    p = sub.add_parser("routes", help="print reverse-proxy config for a cluster")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--format", choices=["nginx", "haproxy", "table", "prometheus"], default="nginx")
    p.add_argument("--listen", type=_listen_address, default="8008",
                   help="where the proxy listens: a port, or HOST:PORT")
    p.add_argument("--sync-workers", type=_names, metavar="A,B",
                   help="the generic workers that take /sync (default: every one with a client listener)")
    p.add_argument("--client-workers", type=_names, metavar="C,D",
                   help="the generic workers that take the other client traffic (default: every one)")
    p.set_defaults(fn=_routes)

    p = sub.add_parser("local-cluster", help="run every instance of a cluster file plus nginx, here")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--listen", type=int, default=8008, help="nginx port")
    p.add_argument("--log-dir")
    p.set_defaults(fn=_local_cluster)

    args = parser.parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
