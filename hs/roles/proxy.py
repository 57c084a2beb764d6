"""Reverse-proxy config rendered from the route table, so nobody copies routing regexes by hand.

Each route goes to the instances that serve it (`routes_for_instance`) and have a listener with its
resource; routes several instances serve are balanced (sticky per user for /sync, per room for event
sending, as the seed advises), the rest go to main.
"""

from __future__ import annotations

import re
from collections import defaultdict

from hs.api.base import Route
from hs.config import HomeserverConfig
from hs.roles.routes import all_routes, routes_for_instance

STICKY_BY_ROOM = {"event_sending"}
STICKY_BY_USER = {"sync"}


def path_regex(path: str) -> str:
    """`/rooms/{roomId}/send/{type}/{txnId}` -> `^/rooms/[^/]+/send/[^/]+/[^/]+$`."""
    out = ""
    for part in re.split(r"(\{[^}]+\})", path):
        out += "[^/]+" if part.startswith("{") else re.escape(part).replace("\\/", "/")
    return f"^{out}$"


def _instances_serving(config: HomeserverConfig, route: Route) -> list[tuple[str, int]]:
    out = []
    for instance in ["main", *config.workers]:
        if route not in routes_for_instance(config, instance):
            continue
        for listener in config.listeners_for(instance):
            if route.resource in listener.all_resources:
                host = config.instance_map[instance].host if instance in config.instance_map else "127.0.0.1"
                out.append((host, listener.port))
                break
    return out


def route_table(config: HomeserverConfig) -> list[tuple[Route, str, list[tuple[str, int]]]]:
    rows = []
    for route in all_routes():
        targets = _instances_serving(config, route)
        for full in route.full_paths():
            rows.append((route, path_regex(full), targets))
    return rows


def render_proxy_config(config: HomeserverConfig, fmt: str) -> str:
    rows = route_table(config)
    if fmt == "table":
        return "\n".join(f"{r.method}\t{rx}\t{r.group}\t{' '.join(f'{h}:{p}' for h, p in t)}" for r, rx, t in rows)
    # Group regexes by target set, keeping the most specific (longest) regexes first.
    by_targets: dict[tuple[tuple[str, int], ...], set[str]] = defaultdict(set)
    groups: dict[tuple[tuple[str, int], ...], str] = {}
    for route, rx, targets in rows:
        key = tuple(targets)
        by_targets[key].add(rx)
        groups.setdefault(key, route.group)
    main_targets = _instances_serving(config, Route("GET", "/_matrix/client/versions", _noop, "client", ()))
    lines: list[str] = []
    if fmt == "nginx":
        for i, (tkey, _rxs) in enumerate(by_targets.items()):
            if not tkey:
                continue
            lines.append(f"upstream hs_{i} {{")
            if groups[tkey] in STICKY_BY_ROOM | STICKY_BY_USER and len(tkey) > 1:
                lines.append("    hash $hs_sticky_key consistent;")
            lines.extend(f"    server {h}:{p};" for h, p in tkey)
            lines.append("}")
        lines.append("map $http_authorization $hs_sticky_key { default $http_authorization; }")
        lines.append("server {")
        lines.append("    listen 8008;")
        lines.append("    client_max_body_size 50M;")
        for i, (tkey, rxs) in enumerate(by_targets.items()):
            if not tkey:
                continue
            for rx in sorted(rxs, key=len, reverse=True):
                lines.append(f"    location ~ {rx} {{ proxy_pass http://hs_{i}; proxy_set_header Host $host;"
                             " proxy_set_header X-Forwarded-For $remote_addr; proxy_read_timeout 120s; }")
        if main_targets:
            h, p = main_targets[0]
            lines.append(f"    location / {{ proxy_pass http://{h}:{p}; proxy_set_header Host $host; }}")
        lines.append("}")
    else:  # haproxy
        lines.append("frontend matrix\n    bind *:8008")
        for i, (tkey, rxs) in enumerate(by_targets.items()):
            if not tkey:
                continue
            for rx in sorted(rxs, key=len, reverse=True):
                lines.append(f"    acl is_hs_{i} path_reg {rx}")
            lines.append(f"    use_backend hs_{i} if is_hs_{i}")
        lines.append("    default_backend hs_main")
        for i, (tkey, _rxs) in enumerate(by_targets.items()):
            if not tkey:
                continue
            lines.append(f"backend hs_{i}\n    balance uri")
            lines.extend(f"    server s{j} {h}:{p}" for j, (h, p) in enumerate(tkey))
        if main_targets:
            h, p = main_targets[0]
            lines.append(f"backend hs_main\n    server main {h}:{p}")
    return "\n".join(lines)


async def _noop(request: object) -> tuple[int, object]:
    return 200, {}
