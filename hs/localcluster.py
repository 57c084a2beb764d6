"""Run a whole cluster on this machine: every instance of a cluster file plus nginx in front, with the
nginx config that `hs routes` renders. For development (`hs local-cluster`) and the cluster tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hs.config import HomeserverConfig, load_config
from hs.roles.proxy import render_proxy_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/bin/nginx")


def find_nginx() -> str:
    found = shutil.which("nginx") or next((p for p in NGINX_CANDIDATES if os.path.exists(p)), None)
    if not found:
        raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
    return found


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


class LocalCluster:
    def __init__(self, config_path: str | Path, proxy_port: int = 8008, workdir: str | Path | None = None,
                 log_dir: str | Path | None = None) -> None:
        self.config_path = Path(config_path)
        self.config: HomeserverConfig = load_config(self.config_path)
        self.proxy_port = proxy_port
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="hs-cluster-"))
        self.log_dir = Path(log_dir or self.workdir / "logs")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.nginx: subprocess.Popen[bytes] | None = None

    @property
    def instances(self) -> list[str]:
        return ["main", *self.config.workers]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def _ports(self, instance: str) -> list[int]:
        return [listener.port for listener in self.config.listeners_for(instance)]

    def start_instance(self, instance: str, timeout: float = 60) -> None:
        log = open(self.log_dir / f"{instance}.log", "ab")  # noqa: SIM115 - owned by the process
        cmd = [sys.executable, "-m", "hs.cli", "run", "--config", str(self.config_path)]
        if instance != "main":
            cmd += ["--role", instance]
        self.procs[instance] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while not all(_port_open("127.0.0.1", p) for p in self._ports(instance)):
            if self.procs[instance].poll() is not None:
                raise RuntimeError(f"{instance} exited; see {self.log_dir / (instance + '.log')}")
            if time.time() > deadline:
                raise RuntimeError(f"{instance} did not start listening in {timeout}s")
            time.sleep(0.1)

    def kill_instance(self, instance: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(instance)
        proc.send_signal(sig)
        proc.wait(30)

    def nginx_config(self) -> str:
        routes = render_proxy_config(self.config, "nginx", self.proxy_port)
        w = self.workdir
        # Run as root (tests, CI), nginx's workers would drop to an unprivileged user that cannot write
        # the temp files for request bodies in our work directory; keep them as the invoking user.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return (
            f"{user}worker_processes 1;\npid {w}/nginx.pid;\nerror_log {w}/logs/nginx-error.log;\n"
            "daemon off;\nevents { worker_connections 2048; }\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {w}/nginx-body;\n"
            f"  proxy_temp_path {w}/nginx-proxy;\n  fastcgi_temp_path {w}/nginx-fastcgi;\n"
            f"  uwsgi_temp_path {w}/nginx-uwsgi;\n  scgi_temp_path {w}/nginx-scgi;\n"
            "  proxy_buffering off;\n  client_body_buffer_size 1m;\n"
            f"{routes}}}\n"
        )

    def start_nginx(self) -> None:
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.nginx_config())
        check = subprocess.run([find_nginx(), "-t", "-c", str(conf), "-p", str(self.workdir)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx rejected the generated config:\n{check.stderr}")
        log = open(self.log_dir / "nginx.out", "ab")  # noqa: SIM115
        self.nginx = subprocess.Popen([find_nginx(), "-c", str(conf), "-p", str(self.workdir)],
                                      stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while not _port_open("127.0.0.1", self.proxy_port):
            if self.nginx.poll() is not None or time.time() > deadline:
                raise RuntimeError("nginx did not start")
            time.sleep(0.05)

    def start(self) -> None:
        try:
            self.start_instance("main")
            for instance in self.config.workers:
                self.start_instance(instance)
            self.start_nginx()
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.terminate()
            self.nginx.wait(10)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


def local_cluster_config(dsn: str, redis_url: str, secret: str, rate_limit: float = 10000) -> dict[str, Any]:
    """The reference cluster shape (main + 2 event persisters + 2 generic workers + a writer for the
    ephemeral streams + a background worker) on free local ports, for tests and benchmarks."""
    def replication() -> dict[str, Any]:
        return {"port": _free_port(), "resources": ["replication"]}

    def client() -> dict[str, Any]:
        return {"port": _free_port(), "resources": ["client"]}

    main_repl, ep1, ep2, sw, bg, s1r, s2r = (replication() for _ in range(7))
    open_limits = {"per_second": rate_limit, "burst_count": rate_limit}
    return {
        "server_name": "cluster.test",
        "database": {"engine": "postgres", "dsn": dsn},
        "redis": {"enabled": True, "url": redis_url},
        "worker_replication_secret": secret,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "registration_shared_secret": "shared-secret",
        "bcrypt_rounds": 4,
        "rc_message": open_limits, "rc_registration": open_limits,
        "rc_login": {"address": open_limits, "account": open_limits, "failed_attempts": open_limits},
        "rc_joins": {"local": open_limits, "remote": open_limits},
        "signing_key_path": "signing.key",
        "listeners": [client(), main_repl],
        "instance_map": {
            "main": {"host": "127.0.0.1", "port": main_repl["port"]},
            "event_persister1": {"host": "127.0.0.1", "port": ep1["port"]},
            "event_persister2": {"host": "127.0.0.1", "port": ep2["port"]},
            "stream_writer": {"host": "127.0.0.1", "port": sw["port"]},
            "background_worker": {"host": "127.0.0.1", "port": bg["port"]},
            "sync1": {"host": "127.0.0.1", "port": s1r["port"]},
            "sync2": {"host": "127.0.0.1", "port": s2r["port"]},
        },
        "stream_writers": {
            "events": ["event_persister1", "event_persister2"],
            "typing": "stream_writer", "to_device": "stream_writer", "receipts": "stream_writer",
            "account_data": "stream_writer", "presence": "stream_writer",
        },
        "run_background_tasks_on": "background_worker",
        "workers": {
            "event_persister1": {"app": "generic_worker", "listeners": [ep1]},
            "event_persister2": {"app": "generic_worker", "listeners": [ep2]},
            "stream_writer": {"app": "generic_worker", "listeners": [sw]},
            "background_worker": {"app": "generic_worker", "listeners": [bg]},
            "sync1": {"app": "generic_worker", "listeners": [client(), s1r]},
            "sync2": {"app": "generic_worker", "listeners": [client(), s2r]},
        },
    }
