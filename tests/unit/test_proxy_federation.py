"""`hs routes` for federation readers: /send is hashed by the X-Matrix origin over the instances that
serve the federation resource (nginx: a map of the Authorization header; haproxy: a variable), the
other federation endpoints go to the same readers hashed as before, and nginx accepts the output."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hs.config import HomeserverConfig, parse_config
from hs.localcluster import find_nginx, local_cluster_config
from hs.roles.proxy import render_proxy_config

SEND = "^/_matrix/federation/v1/send/[^/]+$"


def _cluster(readers: int = 2) -> HomeserverConfig:
    cfg = local_cluster_config("postgresql://postgres@127.0.0.1/unused", "redis://127.0.0.1:6379/0", "secret")
    cfg["listeners"][0]["resources"] = ["client", "federation"]  # main's
    for i in range(readers):
        name = f"fed_reader{i + 1}"
        port = 18100 + i
        cfg["instance_map"][name] = {"host": "127.0.0.1", "port": 18200 + i}
        cfg["workers"][name] = {"app": "generic_worker", "listeners": [
            {"port": port, "resources": ["federation"]}, {"port": 18200 + i, "resources": ["replication"]}]}
    return parse_config(cfg)


def _upstream_of(conf: str, regex: str) -> str:
    match = re.search(r'location ~ "' + re.escape(regex) + r'" \{ proxy_pass http://(\w+);', conf)
    assert match, f"no location for {regex}"
    return match.group(1)


def _upstream_block(conf: str, name: str) -> list[str]:
    match = re.search(r"upstream " + name + r" \{\n(.*?)\n\}", conf, re.S)
    assert match, f"no upstream {name}"
    return [line.strip() for line in match.group(1).splitlines()]


def test_send_is_hashed_by_the_xmatrix_origin_over_the_federation_readers() -> None:
    conf = render_proxy_config(_cluster(), "nginx")
    assert 'map $http_authorization $hs_fed_origin {' in conf
    assert '"~*origin=\\"?(?<hs_origin>[^\\",]+)" $hs_origin;' in conf
    block = _upstream_block(conf, _upstream_of(conf, SEND))
    assert block[0] == "hash $hs_fed_origin consistent;"
    assert sorted(block[1:]) == ["server 127.0.0.1:18100;", "server 127.0.0.1:18101;"]
    # The other federation endpoints: the same readers, hashed as other routes are (not by origin).
    other = _upstream_block(conf, _upstream_of(conf, "^/_matrix/federation/v2/send_join/[^/]+/[^/]+$"))
    assert other[0] == "hash $hs_user_key consistent;"
    assert sorted(other[1:]) == sorted(block[1:])


def test_without_readers_main_takes_send() -> None:
    conf = render_proxy_config(_cluster(readers=0), "nginx")
    block = _upstream_block(conf, _upstream_of(conf, SEND))
    assert len(block) == 1 and block[0].startswith("server 127.0.0.1:")  # one server: no hash line


def test_haproxy_hashes_send_by_the_origin_variable() -> None:
    conf = render_proxy_config(_cluster(), "haproxy")
    acl = next(line for line in conf.splitlines() if SEND in line)
    backend = acl.split()[1].removeprefix("is_")
    section = conf.split(f"backend {backend}\n", 1)[1].split("\nbackend ", 1)[0]
    assert "http-request set-var(txn.hs_origin) req.fhdr(Authorization),regsub(" in section
    assert "balance hash var(txn.hs_origin)" in section
    assert "hash-type consistent" in section


@pytest.mark.parametrize("header,origin", [
    ('X-Matrix origin="remote.example:8448",destination="cluster.test",key="ed25519:a",sig="abc"',
     "remote.example:8448"),
    ('X-Matrix origin=remote.example,key="ed25519:a",sig="abc"', "remote.example"),
    ('X-Matrix key="ed25519:a",ORIGIN="other.example",sig="abc"', "other.example"),
])
def test_the_origin_regex_takes_the_origin_alone(header: str, origin: str) -> None:
    """The nginx map's regex (PCRE; Python's `re` reads this one alike) picks the origin out."""
    match = re.search(r'(?i)origin="?(?P<hs_origin>[^",]+)', header)
    assert match and match.group("hs_origin") == origin


def _nginx_test(conf_text: str, tmp_path: Path, binary: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "worker_processes 1;\n" f"pid {tmp_path}/nginx.pid;\n" f"error_log {tmp_path}/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path}/body;\n  proxy_temp_path {tmp_path}/proxy;\n"
        f"  fastcgi_temp_path {tmp_path}/fcgi;\n  uwsgi_temp_path {tmp_path}/uwsgi;\n  scgi_temp_path {tmp_path}/scgi;\n"
        f"{conf_text}}}\n")
    return subprocess.run([binary, "-t", "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")],
                          capture_output=True, text=True)


def test_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    check = _nginx_test(render_proxy_config(_cluster(), "nginx", listen=18999), tmp_path, find_nginx())
    assert check.returncode == 0, check.stderr


def test_haproxy_accepts_the_rendered_config(tmp_path: Path) -> None:
    # deploy/system-packages.sh installs it (make test runs that first): never skipped.
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    assert haproxy is not None, "haproxy is not installed: run deploy/system-packages.sh"
    conf = tmp_path / "haproxy.cfg"
    conf.write_text("defaults\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"
                    + render_proxy_config(_cluster(), "haproxy", listen=18998))
    check = subprocess.run([haproxy, "-c", "-f", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # The client's address forwarded, a bound on slow request headers, every backend's connect bounded.
    text = render_proxy_config(_cluster(), "haproxy")
    frontend = text.split("\nbackend ")[0]
    assert "    option forwardfor\n" in frontend and "    timeout http-request 30s\n" in frontend
    backends = text.split("\nbackend ")[1:]
    assert backends and all("    timeout connect 5s\n" in b for b in backends)
