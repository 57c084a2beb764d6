"""Run a whole cluster on this machine: every instance of a cluster file plus nginx in front, with the
nginx config that `hs routes` renders. For development (`hs local-cluster`, with a console that stops,
starts and restarts instances by name) and the cluster tests.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from hs.config import HomeserverConfig, load_config
from hs.roles.proxy import render_proxy_config

# Ports this process has handed out. The kernel may give the same free port to two successive
# `bind(0)` calls (the first socket is closed at once): two instances of one cluster configured with
# one port would have the second fail to bind while the first answers on it, unnoticed.
_handed_out: set[int] = set()


def free_port() -> int:
    """A local TCP port free now and not handed out before by this process."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


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


# How long a stopping instance may take before it is killed (a clean stop takes well under a second).
STOP_TIMEOUT_S = 10.0


class LocalCluster:
    """The processes of one cluster file: an `hs run` per instance, and nginx in front.

    Instances can be stopped, started and restarted by name while the others run (`stop_instance`,
    `start_instance`, `restart_instance`): what an operator does to one worker, and what fault tests
    need. One operation at a time: the methods are not meant to be called from several threads at once.
    """

    def __init__(self, config_path: str | Path, proxy_port: int = 8008, workdir: str | Path | None = None,
                 log_dir: str | Path | None = None) -> None:
        self.config_path = Path(config_path)
        self.config: HomeserverConfig = load_config(self.config_path)
        self.proxy_port = proxy_port
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="hs-cluster-"))
        self.log_dir = Path(log_dir or self.workdir / "logs").resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.nginx: subprocess.Popen[bytes] | None = None
        # Instances that did not stop within STOP_TIMEOUT_S of SIGTERM and were killed.
        self.killed: list[str] = []

    @property
    def instances(self) -> list[str]:
        return ["main", *self.config.workers]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def _ports(self, instance: str) -> list[int]:
        return [listener.port for listener in self.config.listeners_for(instance)]

    def _check_name(self, instance: str) -> None:
        if instance not in self.instances:
            raise ValueError(f"unknown instance {instance!r}; known: {', '.join(self.instances)}")

    def is_running(self, instance: str) -> bool:
        proc = self.procs.get(instance)
        return proc is not None and proc.poll() is None

    def status(self) -> dict[str, int | None]:
        """Each instance's PID, or None when it is not running."""
        return {name: self.procs[name].pid if self.is_running(name) else None for name in self.instances}

    def start_instance(self, instance: str, timeout: float = 60) -> None:
        """Start `instance` and return once all its listeners accept connections."""
        self._check_name(instance)
        if self.is_running(instance):
            raise RuntimeError(f"{instance} is already running (pid {self.procs[instance].pid})")
        # A port another process holds would be found open below while the instance fails to bind it.
        taken = [p for p in self._ports(instance) if _port_open("127.0.0.1", p)]
        if taken:
            raise RuntimeError(f"cannot start {instance}: port(s) {taken} are in use by another process")
        cmd = [sys.executable, "-m", "hs.cli", "run", "--config", str(self.config_path)]
        if instance != "main":
            cmd += ["--role", instance]
        with open(self.log_dir / f"{instance}.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.procs[instance] = proc
        deadline = time.monotonic() + timeout
        while not all(_port_open("127.0.0.1", p) for p in self._ports(instance)):
            if proc.poll() is not None:
                raise RuntimeError(f"{instance} exited; see {self.log_dir / (instance + '.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{instance} did not start listening in {timeout}s")
            time.sleep(0.05)

    def stop_instance(self, instance: str, timeout: float = STOP_TIMEOUT_S) -> float:
        """Stop `instance` cleanly (SIGTERM; SIGKILL only after `timeout`); returns the seconds it took."""
        self._check_name(instance)
        if not self.is_running(instance):
            raise RuntimeError(f"{instance} is not running")
        began = time.monotonic()
        self._stop_processes({instance: self.procs.pop(instance)}, timeout)
        return time.monotonic() - began

    def restart_instance(self, instance: str, timeout: float = 60) -> float:
        """Stop `instance` (if it runs) and start it again; returns the seconds it was away."""
        began = time.monotonic()
        if self.is_running(instance):
            self.stop_instance(instance)
        self.start_instance(instance, timeout)
        return time.monotonic() - began

    def kill_instance(self, instance: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` (a crash, by default) and wait for the process to end."""
        proc = self.procs.pop(instance)
        proc.send_signal(sig)
        proc.wait(30)

    def _stop_processes(self, procs: dict[str, subprocess.Popen[bytes]], timeout: float) -> None:
        """SIGTERM all at once, then wait for all; any still running after `timeout` is killed."""
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for name, proc in procs.items():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.killed.append(name)
                proc.kill()
                proc.wait()

    def nginx_config(self) -> str:
        routes = render_proxy_config(self.config, "nginx", self.proxy_port)
        w = self.workdir
        # Run as root (tests, CI), nginx's workers would drop to an unprivileged user that cannot write
        # the temp files for request bodies in our work directory; keep them as the invoking user.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return (
            f"{user}worker_processes 1;\npid {w}/nginx.pid;\nerror_log {self.log_dir}/nginx-error.log;\n"
            "daemon off;\nevents { worker_connections 2048; }\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {w}/nginx-body;\n"
            f"  proxy_temp_path {w}/nginx-proxy;\n  fastcgi_temp_path {w}/nginx-fastcgi;\n"
            f"  uwsgi_temp_path {w}/nginx-uwsgi;\n  scgi_temp_path {w}/nginx-scgi;\n"
            "  proxy_buffering off;\n  client_body_buffer_size 1m;\n"
            f"{routes}}}\n"
        )

    def _nginx_cmd(self, conf: Path) -> list[str]:
        # -e: the log nginx writes to before it has read error_log from the config (its built-in
        # default is a system path that may not be writable).
        return [find_nginx(), "-c", str(conf), "-p", str(self.workdir), "-e", str(self.log_dir / "nginx-error.log")]

    def start_nginx(self) -> None:
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.nginx_config())
        check = subprocess.run([*self._nginx_cmd(conf), "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx rejected the generated config:\n{check.stderr}")
        with open(self.log_dir / "nginx.out", "ab") as log:
            self.nginx = subprocess.Popen(self._nginx_cmd(conf), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not _port_open("127.0.0.1", self.proxy_port):
            if self.nginx.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start; see {self.log_dir / 'nginx-error.log'}")
            time.sleep(0.05)

    def start(self) -> None:
        try:
            self.start_instance("main")
            for instance in self.config.workers:
                self.start_instance(instance)
            self.start_nginx()
        except BaseException:  # Ctrl-C too: stop what has started
            self.stop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop every instance at once (their long-polls are answered through nginx), then nginx."""
        procs, self.procs = self.procs, {}
        self._stop_processes(procs, timeout)
        if self.nginx is not None:
            self._stop_processes({"nginx": self.nginx}, timeout)
            self.nginx = None


CONSOLE_HELP = "commands: status | stop NAME | start NAME | restart NAME | quit (or SIGINT/SIGTERM)"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_command(cluster: LocalCluster, line: str) -> str | None:
    """One console command; returns the reply line, or None for `quit`."""
    words = line.split()
    if not words:
        return ""
    verb, args = words[0].lower(), words[1:]
    if verb in ("quit", "exit"):
        return None
    if verb == "status" and not args:
        return "; ".join(f"{name} {'pid ' + str(pid) if pid else 'stopped'}" for name, pid in cluster.status().items())
    if verb not in ("stop", "start", "restart") or len(args) != 1:
        return f"error: {line.strip()!r}: {CONSOLE_HELP}"
    name = args[0]
    try:
        if verb == "stop":
            return f"stopped {name} in {cluster.stop_instance(name):.2f}s"
        if verb == "start":
            began = time.monotonic()
            cluster.start_instance(name)
            return f"started {name} (pid {cluster.procs[name].pid}) in {time.monotonic() - began:.2f}s"
        took = cluster.restart_instance(name)
        return f"restarted {name} (pid {cluster.procs[name].pid}) in {took:.2f}s"
    except (ValueError, RuntimeError) as e:
        return f"error: {e}"


def serve_console(cluster: LocalCluster, commands: int | None, out: TextIO) -> str:
    """Answer the commands arriving on file descriptor `commands` (one per line) until `quit` or a stop
    signal; returns what ended it. The end of the input (a supervisor's /dev/null) ends nothing.

    The signals are taken with a wake-up pipe, not by blocking them: a blocked signal mask is inherited
    by every process started meanwhile (the instances then ignored SIGTERM until they were killed).
    """
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in STOP_SIGNALS}
    previous_fd = signal.set_wakeup_fd(wake_w)
    selector = selectors.PollSelector()  # poll, unlike epoll, also takes a regular file as input
    selector.register(wake_r, selectors.EVENT_READ)
    if commands is not None:
        selector.register(commands, selectors.EVENT_READ)
    pending = b""
    try:
        while not received:
            for key, _ in selector.select():
                if key.fd == wake_r:
                    os.read(wake_r, 512)
                    continue
                chunk = os.read(key.fd, 4096)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                pending += chunk
                while b"\n" in pending and not received:
                    raw, pending = pending.split(b"\n", 1)
                    reply = run_command(cluster, raw.decode(errors="replace"))
                    if reply is None:
                        return "quit"
                    if reply:
                        print(reply, file=out, flush=True)
        return signal.Signals(received[0]).name
    finally:
        selector.close()
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_r)
        os.close(wake_w)


def local_cluster_config(dsn: str, redis_url: str, secret: str, rate_limit: float = 10000) -> dict[str, Any]:
    """The reference cluster shape (main + 2 event persisters + 2 generic workers + a writer for the
    ephemeral streams + a background worker) on free local ports, for tests and benchmarks."""
    def replication() -> dict[str, Any]:
        return {"port": free_port(), "resources": ["replication"]}

    def client() -> dict[str, Any]:
        return {"port": free_port(), "resources": ["client"]}

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
