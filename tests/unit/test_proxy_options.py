"""`hs routes` options an operator reaches for: the proxy's own address (`--listen HOST:PORT`) and which
generic workers take /sync and which the other client traffic (`--sync-workers`, `--client-workers`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from hs.config import HomeserverConfig, parse_config
from hs.localcluster import local_cluster_config
from hs.roles.proxy import WorkerSplit, render_proxy_config, route_targets


def _cluster() -> HomeserverConfig:
    return parse_config(local_cluster_config("postgresql://postgres@127.0.0.1/unused", "redis://127.0.0.1:6379/0",
                                             "secret"))


def _targets(cfg: HomeserverConfig, split: WorkerSplit | None, path: str) -> set[int]:
    return {port for route, rx, targets in route_targets(cfg, split) if rx == path for _h, port in targets}


def test_sync_and_client_traffic_split_between_workers() -> None:
    cfg = _cluster()
    port = {name: next(lst.port for lst in cfg.listeners_for(name) if "client" in lst.all_resources)
            for name in ("sync1", "sync2")}
    everyone = {port["sync1"], port["sync2"]}
    assert _targets(cfg, None, "^/_matrix/client/v3/sync$") == everyone
    assert _targets(cfg, None, "^/_matrix/client/v3/createRoom$") == everyone
    split = WorkerSplit(frozenset({"sync1"}), frozenset({"sync2"}))
    assert _targets(cfg, split, "^/_matrix/client/v3/sync$") == {port["sync1"]}
    assert _targets(cfg, split, "^/_matrix/client/unstable/org\\.matrix\\.simplified_msc3575/sync$") == {port["sync1"]}
    assert _targets(cfg, split, "^/_matrix/client/v3/createRoom$") == {port["sync2"]}
    # (Here the typing writer has no client listener: its endpoints go to the client workers, which
    # forward the writes.)
    assert _targets(cfg, split, "^/_matrix/client/v3/rooms/[^/]+/typing/[^/]+$") == {port["sync2"]}
    assert WorkerSplit(frozenset({"nope", "event_persister1"})).check(cfg) == [
        "--sync-workers: 'event_persister1' is not a worker with a client listener",
        "--sync-workers: 'nope' is not a worker with a client listener"]


def test_the_proxy_listens_where_it_is_told(tmp_path: Path) -> None:
    cfg = _cluster()
    assert "    listen 127.0.0.1:8080;" in render_proxy_config(cfg, "nginx", "127.0.0.1:8080")
    assert "    listen 8008;" in render_proxy_config(cfg, "nginx")
    conf = render_proxy_config(cfg, "haproxy", "127.0.0.1:18997", WorkerSplit(frozenset({"sync1"}), None))
    assert "    bind 127.0.0.1:18997\n" in conf
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    assert haproxy is not None, "haproxy is not installed: run deploy/system-packages.sh"
    path = tmp_path / "haproxy.cfg"
    path.write_text("defaults\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n" + conf)
    check = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_command_refuses_unknown_workers_and_bad_addresses() -> None:
    cfg = Path(__file__).parents[2] / "deploy" / "cluster.yaml"
    hs = [sys.executable, "-m", "hs.cli", "routes", "-c", str(cfg)]
    out = subprocess.run([*hs, "--sync-workers", "sync1,nope"], capture_output=True, text=True)
    assert out.returncode == 1 and "--sync-workers: 'nope' is not a worker with a client listener" in out.stderr
    out = subprocess.run([*hs, "--listen", "somewhere"], capture_output=True, text=True)
    assert out.returncode == 2 and "is not a port or HOST:PORT" in out.stderr
    out = subprocess.run([*hs, "--listen", "[::1]:8448", "--client-workers", "sync2"], capture_output=True, text=True)
    assert out.returncode == 0 and "listen [::1]:8448;" in out.stdout
