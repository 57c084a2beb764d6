"""A worker cluster that federates, for tests against a real Synapse: `FederatingCluster`.

The cluster is hs/localcluster.py's LocalCluster (an `hs run --role X` subprocess per instance, nginx
in front with the config `hs routes` renders) in the shape issue 13 needs: main; two event persisters;
two generic workers `fed_reader1/2` serving the client and federation resources; a `stream_writer`
for the ephemeral streams; two federation senders `fed_sender1/2` (`app: federation_sender`, named
in `federation_sender_instances`). They share a fresh PostgreSQL database and a Redis.

Other servers reach it as `localhost:<port>`: nginx listens with TLS on that port, serving a
certificate from the test CA (`TlsLocalCluster.nginx_config` rewrites the generated server block), and
every instance has the federation settings of the in-process FederatingHs (`federation_overrides`:
the CA trusted for outbound federation, loopback allowed, no notary). So a federation request from
Synapse goes through the same route table as a client's, as it would in production behind a proxy.

It offers what federation tests use from FederatingHs (`server_name`, `base_url`, `register_user`,
`client`, `log_tail`), plus per-instance control for fault tests (`kill_instance`, `start_instance`,
`restart_instance`, awaitable so a test's traffic keeps flowing meanwhile), and config changes for
running processes to pick up when (re)started (`set_federation_senders`, `add_worker`).
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
from pathlib import Path
from typing import Any

import yaml

from hs.config import load_config
from hs.localcluster import LocalCluster
from tests.federation.client import TlsClient
from tests.federation.hs_server import SHARED_SECRET, federation_overrides
from tests.federation.synapse import shared_secret_register
from tests.federation.tls import ServerCert
from tests.services import free_port

REPLICATION_SECRET = "replication-secret-for-federation-cluster-tests"
OPEN_LIMITS = {"per_second": 10000, "burst_count": 10000}
READERS = ("fed_reader1", "fed_reader2")
SENDERS = ("fed_sender1", "fed_sender2")
PERSISTERS = ("event_persister1", "event_persister2")
# The nginx access log records which upstream served each request (a test can check routing with it).
ACCESS_LOG_FORMAT = '$msec $request_method $uri $status upstream=$upstream_addr auth="$http_authorization"'


def _replication() -> dict[str, Any]:
    return {"port": free_port(), "resources": ["replication"]}


def _metrics() -> dict[str, Any]:
    return {"port": free_port(), "type": "metrics", "resources": ["metrics"]}


def _http(*resources: str) -> dict[str, Any]:
    return {"port": free_port(), "resources": list(resources)}


def sender_worker() -> dict[str, Any]:
    """A federation sender's worker entry (Synapse's keys): replication and metrics listeners."""
    return {"app": "federation_sender", "listeners": [_replication(), _metrics()]}


def federating_cluster_config(dsn: str, redis_url: str, port: int, cert: ServerCert) -> dict[str, Any]:
    """The cluster file of a FederatingCluster reached as `localhost:<port>` (ports free now)."""
    fed = federation_overrides(port, cert)
    # The instances listen in plain HTTP behind nginx: the TLS listener of the monolith's overrides
    # (and its certificate keys) is nginx's job here.
    for key in ("listeners", "tls_certificate_path", "tls_private_key_path"):
        fed.pop(key)
    # In start order (LocalCluster starts them as listed): the writers the others call at start first.
    workers: dict[str, dict[str, Any]] = {
        "stream_writer": {"app": "generic_worker", "listeners": [_http("client"), _replication()]},
        **{name: {"app": "generic_worker", "listeners": [_replication()]} for name in PERSISTERS},
        **{name: {"app": "generic_worker", "listeners": [_http("client", "federation"), _replication()]}
           for name in READERS},
        **{name: sender_worker() for name in SENDERS},
    }
    main_listeners = [_http("client", "federation"), _replication()]
    cfg: dict[str, Any] = {
        **fed,
        "database": {"engine": "postgres", "dsn": dsn},
        "redis": {"enabled": True, "url": redis_url},
        "worker_replication_secret": REPLICATION_SECRET,
        "enable_registration": False,
        "bcrypt_rounds": 4,
        "rc_message": OPEN_LIMITS, "rc_registration": OPEN_LIMITS,
        "rc_login": {"address": OPEN_LIMITS, "account": OPEN_LIMITS, "failed_attempts": OPEN_LIMITS},
        "rc_joins": {"local": OPEN_LIMITS, "remote": OPEN_LIMITS},
        "signing_key_path": "signing.key",
        "listeners": main_listeners,
        "instance_map": {},
        "stream_writers": {
            "events": list(PERSISTERS),
            "typing": "stream_writer", "to_device": "stream_writer", "receipts": "stream_writer",
            "account_data": "stream_writer", "presence": "stream_writer",
        },
        "federation_sender_instances": list(SENDERS),
        "workers": workers,
    }
    _fill_instance_map(cfg)
    return cfg


def _fill_instance_map(cfg: dict[str, Any]) -> None:
    """Every instance with a replication listener is in instance_map (what the others dial)."""
    entries = [("main", cfg["listeners"])] + [(n, w["listeners"]) for n, w in cfg["workers"].items()]
    for name, listeners in entries:
        for listener in listeners:
            if "replication" in listener.get("resources", ()) and listener.get("type", "http") == "http":
                cfg["instance_map"][name] = {"host": "127.0.0.1", "port": listener["port"]}


class TlsLocalCluster(LocalCluster):
    """LocalCluster whose nginx serves TLS (a test CA certificate for `localhost`) on the proxy port,
    with an access log naming each request's upstream, and whose config can be re-read after the file
    changed (`reload_config`): LocalCluster reads it once, in __init__, for its instance names and
    ports; the `hs run` processes read the file themselves when they start."""

    def __init__(self, config_path: Path, proxy_port: int, workdir: Path, cert: ServerCert) -> None:
        super().__init__(config_path, proxy_port=proxy_port, workdir=workdir)
        self.cert = cert

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.proxy_port}"

    @property
    def access_log_path(self) -> Path:
        return self.log_dir / "nginx-access.log"

    def nginx_config(self) -> str:
        plain = f"    listen {self.proxy_port};\n"
        conf = super().nginx_config()
        if conf.count(plain) != 1:
            raise RuntimeError(f"expected one {plain.strip()!r} in the generated nginx config:\n{conf}")
        tls = (f"    listen 127.0.0.1:{self.proxy_port} ssl;\n"
               f"    ssl_certificate {self.cert.cert_path};\n"
               f"    ssl_certificate_key {self.cert.key_path};\n"
               f"    access_log {self.access_log_path} hs_upstream;\n")
        conf = conf.replace(plain, tls)
        # log_format belongs to the http block: before the first upstream/map the routes open with.
        return conf.replace("  access_log off;\n",
                            f"  access_log off;\n  log_format hs_upstream '{ACCESS_LOG_FORMAT}';\n", 1)

    def reload_config(self) -> None:
        """Re-read the cluster file (after it was rewritten) for instance names and ports."""
        self.config = load_config(self.config_path)

    def reload_nginx(self) -> None:
        """Render the nginx config again from the current cluster file and have nginx reload it."""
        if self.nginx is None:
            return
        (self.workdir / "nginx.conf").write_text(self.nginx_config())
        self.nginx.send_signal(signal.SIGHUP)


class FederatingCluster:
    """A running federating cluster (see the module docstring). `start()`/`stop()` block (fixtures);
    the per-instance controls are coroutines that run the blocking LocalCluster calls in a thread."""

    __test__ = False

    def __init__(self, workdir: Path, dsn: str, redis_url: str, cert: ServerCert) -> None:
        self.workdir = workdir
        self.dsn = dsn
        self.cert = cert
        self.port = free_port()
        self.server_name = f"localhost:{self.port}"
        self.base_url = f"https://localhost:{self.port}"
        self.raw = federating_cluster_config(dsn, redis_url, self.port, cert)
        self.config_path = workdir / "cluster.yaml"
        self.write_config()
        from hs.events.signing import SigningKey, write_signing_key_file

        write_signing_key_file(workdir / "signing.key", SigningKey.generate())
        self.cluster = TlsLocalCluster(self.config_path, self.port, workdir, cert)
        # One instance operation at a time (LocalCluster's rule), even from concurrent tasks.
        self._lock = asyncio.Lock()

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self.cluster.start()

    def stop(self) -> None:
        self.cluster.stop()

    @property
    def log_dir(self) -> Path:
        return self.cluster.log_dir

    @property
    def instances(self) -> list[str]:
        return self.cluster.instances

    def is_running(self, instance: str) -> bool:
        return self.cluster.is_running(instance)

    async def _locked(self, fn: Any, *args: Any) -> Any:
        async with self._lock:
            return await asyncio.to_thread(fn, *args)

    async def kill_instance(self, instance: str, sig: int = signal.SIGKILL) -> None:
        """A crash (kill -9 by default): no clean stop, nothing released."""
        await self._locked(self.cluster.kill_instance, instance, sig)

    async def stop_instance(self, instance: str) -> float:
        """A clean stop (SIGTERM); returns the seconds it took."""
        return float(await self._locked(self.cluster.stop_instance, instance))

    async def start_instance(self, instance: str) -> float:
        """Start `instance`; returns the seconds until all its listeners accepted connections."""
        began = asyncio.get_running_loop().time()
        await self._locked(self.cluster.start_instance, instance)
        return asyncio.get_running_loop().time() - began

    async def restart_instance(self, instance: str) -> float:
        """Stop (if running) and start `instance`; returns the seconds it was away."""
        return float(await self._locked(self.cluster.restart_instance, instance))

    # -- config changes ------------------------------------------------------------------------------
    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.raw, sort_keys=False))

    def _apply(self) -> None:
        self.write_config()
        if hasattr(self, "cluster"):
            self.cluster.reload_config()
            self.cluster.reload_nginx()

    def set_federation_senders(self, instances: list[str]) -> None:
        """Rewrite `federation_sender_instances`; processes started from now on read the new list (the
        running ones keep theirs until restarted)."""
        self.raw["federation_sender_instances"] = list(instances)
        self._apply()

    def add_worker(self, name: str, worker: dict[str, Any] | None = None, *,
                   federation_sender: bool = False) -> None:
        """Add a worker to the cluster file (a federation sender's entry by default); with
        `federation_sender` it also joins `federation_sender_instances`. Start it with start_instance."""
        self.raw["workers"][name] = copy.deepcopy(worker) if worker is not None else sender_worker()
        _fill_instance_map(self.raw)
        if federation_sender and name not in self.raw["federation_sender_instances"]:
            self.raw["federation_sender_instances"].append(name)
        self._apply()

    @property
    def federation_sender_instances(self) -> list[str]:
        return list(self.raw["federation_sender_instances"])

    # -- what tests use from FederatingHs -------------------------------------------------------------
    def client(self, token: str | None = None) -> TlsClient:
        """A client of the cluster through nginx's TLS port (the test CA trusted)."""
        return TlsClient(self.base_url, self.cert.ca_path, token)

    async def register_user(self, localpart: str, password: str = "password123",
                            admin: bool = False) -> tuple[str, str]:
        """Register through the shared-secret admin API (as on Synapse); returns (user_id, token)."""
        return await shared_secret_register(self.client(), SHARED_SECRET, localpart, password, admin)

    def log_path(self, instance: str) -> Path:
        return self.log_dir / f"{instance}.log"

    def instance_log(self, instance: str) -> str:
        try:
            return self.log_path(instance).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 50) -> str:
        """Each instance's last lines (about `n` in all, warnings and errors first), and nginx's
        errors: what a failing test's report shows."""
        names = [*self.instances, "nginx-error"]
        per = max(6, n // len(names))
        parts = [f"(logs in {self.log_dir})"]
        for name in names:
            lines = self.instance_log(name).splitlines()
            problems = [ln for ln in lines if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]
            shown = problems[-per // 2:] + [ln for ln in lines[-per:] if ln not in problems[-per // 2:]]
            parts.append(f"--- {name} ({len(lines)} lines, {len(problems)} warnings/errors) ---")
            parts.extend(shown[-per:])
        return "\n".join(parts)

    def grep_logs(self, needle: str, instances: list[str] | None = None) -> list[str]:
        """Log lines containing `needle`, prefixed by their instance, for a failure message."""
        out: list[str] = []
        for name in instances or self.instances:
            out.extend(f"{name}: {ln}" for ln in self.instance_log(name).splitlines() if needle in ln)
        return out

    def access_log(self) -> list[str]:
        try:
            return self.cluster.access_log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    # -- the database --------------------------------------------------------------------------------
    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of a read-only query on the cluster's database (what a test inspects: leases)."""
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            return [dict(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    async def destination_row(self, destination: str) -> dict[str, Any] | None:
        rows = await self.fetch("SELECT * FROM federation_destinations WHERE destination = $1", destination)
        return rows[0] if rows else None


def keep_logs() -> bool:
    """HS_KEEP_CLUSTER_LOGS=1 prints where the cluster's logs are (as tests/cluster/conftest.py does)."""
    return bool(os.environ.get("HS_KEEP_CLUSTER_LOGS"))
