"""`hs routes` for the media repository: the media prefixes and the seed's media admin paths go to the
media workers (main when there are none), the body limit follows `max_upload_size` with headroom,
uploads stream through nginx, downloads are hashed by media ID, a dead worker is skipped, and nginx and
haproxy accept the output."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hs.config import HomeserverConfig, parse_config
from hs.localcluster import find_nginx, local_cluster_config
from hs.roles.proxy import MEDIA_ADMIN_REGEXES, body_limit, render_proxy_config
from tests.unit.test_proxy_federation import _nginx_test

MEDIA_PORTS = {"media1": 18401, "media2": 18402}


def _cluster(media_workers: int = 2, **extra: Any) -> HomeserverConfig:
    cfg = local_cluster_config("postgresql://postgres@127.0.0.1/unused", "redis://127.0.0.1:6379/0", "secret")
    cfg["listeners"][0]["port"] = 18000  # main's client listener
    cfg["listeners"][0]["resources"] = ["client", "federation"]
    names = list(MEDIA_PORTS)[:media_workers]
    for name in names:
        cfg["instance_map"][name] = {"host": "127.0.0.1", "port": MEDIA_PORTS[name] + 100}
        cfg["workers"][name] = {"app": "media_repository", "listeners": [
            {"port": MEDIA_PORTS[name], "resources": ["media"]},
            {"port": MEDIA_PORTS[name] + 100, "resources": ["replication"]}]}
    if names:
        cfg["enable_media_repo"] = False
        cfg["media_instance_running_background_jobs"] = names[0]
    cfg.update(extra)
    return parse_config(cfg)


def _location(conf: str, opening: str) -> str:
    """The text of the location block that starts with `opening` (nested blocks included)."""
    start = conf.index(opening)
    depth, i = 0, conf.index("{", start)
    while True:
        depth += {"{": 1, "}": -1}.get(conf[i], 0)
        if depth == 0:
            return conf[start:i + 1]
        i += 1


def _upstream(conf: str, name: str) -> list[str]:
    match = re.search(r"upstream " + name + r" \{\n(.*?)\n\}", conf, re.S)
    assert match, f"no upstream {name}"
    return [line.strip() for line in match.group(1).splitlines()]


@pytest.mark.parametrize("prefix", ["/_matrix/media/", "/_matrix/client/v1/media/", "/_matrix/federation/v1/media/"])
def test_media_prefixes_go_to_the_media_workers_with_streaming_and_the_upload_limit(prefix: str) -> None:
    conf = render_proxy_config(_cluster(max_upload_size="100M"), "nginx")
    block = _location(conf, f"location ^~ {prefix} {{")
    assert "proxy_pass http://hs_media;" in block
    limit = body_limit(100 * 1024 * 1024)
    assert limit > 100 * 1024 * 1024
    assert f"client_max_body_size {-(-limit // 1024)}k;" in block
    assert "proxy_request_buffering off;" in block  # uploads stream to hs
    assert "proxy_max_temp_file_size 0;" in block  # downloads are never spooled to nginx's disk
    assert "proxy_next_upstream error timeout http_503 non_idempotent;" in block
    # Downloads and thumbnails: the nested location, hashed by media ID.
    assert re.search(r'location ~ "[^"]*\(download\|thumbnail\)/" \{ proxy_pass http://hs_media_files; \}', block)
    assert _upstream(conf, "hs_media") == ["least_conn;", "server 127.0.0.1:18401 max_fails=1 fail_timeout=10s;",
                                           "server 127.0.0.1:18402 max_fails=1 fail_timeout=10s;"]
    assert _upstream(conf, "hs_media_files")[0] == "hash $hs_media_id consistent;"


def test_no_other_location_serves_media_and_main_is_not_a_media_upstream() -> None:
    conf = render_proxy_config(_cluster(), "nginx")
    regexes = re.findall(r'location ~ "([^"]+)" \{ proxy_pass http://(\w+);', conf)
    for rx, upstream in regexes:
        # (The user media statistics are main's, as in Synapse: figures read from the database.)
        if "media" in rx and "/statistics/users/media" not in rx:
            assert upstream.startswith("hs_media"), (rx, upstream)
    for name in ("hs_media", "hs_media_files"):
        assert "server 127.0.0.1:18000" not in " ".join(_upstream(conf, name))


def test_the_seed_admin_regexes_go_to_the_media_workers() -> None:
    conf = render_proxy_config(_cluster(), "nginx")
    admin = next(rx for rx, up in re.findall(r'location ~ "([^"]+)" \{ proxy_pass http://(\w+);', conf)
                 if up == "hs_media")
    for path in ("/_synapse/admin/v1/purge_media_cache", "/_synapse/admin/v1/room/!r:hs/media",
                 "/_synapse/admin/v1/user/@u:hs/media", "/_synapse/admin/v1/media/hs/abc",
                 "/_synapse/admin/v1/quarantine_media/!r:hs", "/_synapse/admin/v1/users/@u:hs/media"):
        assert re.match(admin, path), path
    for path in ("/_synapse/admin/v2/users/@u:hs", "/_synapse/admin/v1/rooms/!r:hs"):
        assert not re.match(admin, path), path
    assert len(MEDIA_ADMIN_REGEXES) == 6


@pytest.mark.parametrize("uri,media_id", [
    ("/_matrix/client/v1/media/download/hs.test/AbC123", "AbC123"),
    ("/_matrix/client/v1/media/download/hs.test/AbC123/cat.jpg", "AbC123"),
    ("/_matrix/media/v3/thumbnail/hs.test/AbC123", "AbC123"),
    ("/_matrix/federation/v1/media/download/AbC123", "AbC123"),
])
def test_the_media_id_map_takes_the_media_id(uri: str, media_id: str) -> None:
    """The map's regexes (PCRE; Python's `re` reads these alike) pick out the media ID."""
    conf = render_proxy_config(_cluster(), "nginx")
    block = conf.split("map $uri $hs_media_id {", 1)[1].split("}", 1)[0]
    regexes = [line.split('"')[1].removeprefix("~").replace("(?<", "(?P<") for line in block.splitlines() if '"' in line]
    found = [m.group(m.lastgroup or 0) for m in (re.match(rx, uri) for rx in regexes) if m]
    assert found[:1] == [media_id]


def test_without_media_workers_main_serves_media() -> None:
    conf = render_proxy_config(_cluster(media_workers=0), "nginx")
    assert _upstream(conf, "hs_media") == ["server 127.0.0.1:18000 max_fails=1 fail_timeout=10s;"]
    assert "location ^~ /_matrix/media/ {" in conf


def test_other_locations_keep_the_request_body_limit() -> None:
    conf = render_proxy_config(_cluster(max_request_body_size=4 * 1024 * 1024), "nginx")
    server = conf.split("server {", 1)[1]
    assert f"    client_max_body_size {body_limit(4 * 1024 * 1024) // 1024}k;" in server.splitlines()
    assert "error_page 413 @hs_too_large;" in server  # hs's M_TOO_LARGE, not nginx's HTML page


def test_haproxy_sends_media_to_the_media_backends_first() -> None:
    conf = render_proxy_config(_cluster(max_upload_size="20M"), "haproxy")
    lines = conf.splitlines()
    uses = [line.strip() for line in lines if line.strip().startswith("use_backend")]
    assert uses[:2] == ["use_backend hs_media_files if is_hs_media_file", "use_backend hs_media if is_hs_media"]
    media = conf.split("backend hs_media\n", 1)[1].split("\nbackend ", 1)[0]
    assert "balance leastconn" in media and "option redispatch" in media and "option httpchk GET /health" in media
    assert f"gt {body_limit(20 * 1024 * 1024)} }}" in media
    assert "server s0 127.0.0.1:18401 check" in media and "server s1 127.0.0.1:18402 check" in media
    files = conf.split("backend hs_media_files\n", 1)[1].split("\nbackend ", 1)[0]
    assert "balance uri path-only" in files and "hash-type consistent" in files


def test_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    check = _nginx_test(render_proxy_config(_cluster(), "nginx", listen=18997), tmp_path, find_nginx())
    assert check.returncode == 0, check.stderr


def test_haproxy_accepts_the_rendered_config(tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    assert haproxy is not None, "haproxy is not installed: run deploy/system-packages.sh"
    conf = tmp_path / "haproxy.cfg"
    conf.write_text("defaults\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"
                    + render_proxy_config(_cluster(), "haproxy", listen=18996))
    check = subprocess.run([haproxy, "-c", "-f", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_media_route_is_under_the_media_locations() -> None:
    """The media locations take every media endpoint; one outside them would still reach the media
    workers (a per-route location of its own), but this says where each one goes today."""
    from hs.roles.proxy import is_media_path
    from hs.roles.routes import media_routes

    outside = [p for r in media_routes() for p in r.full_paths() if not is_media_path(p)]
    assert outside == []
