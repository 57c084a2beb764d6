"""Reverse-proxy config rendered from the route table, so nobody copies routing regexes by hand.

Each route goes to the instances that serve it (`routes_for_instance`) on a listener with its resource;
anything no worker serves goes to main. Where several instances serve a route the upstream hashes on a
sticky key: the room for event sending (so one room's sends queue on one worker), the origin server
named in the X-Matrix Authorization header for federation `/send` (so one server's transactions, taken
one at a time, reach one federation reader and do not wait on another's lock), the access token
(or client address) otherwise, so a user's /sync long-polls and multi-step auth stay on one worker.
"""

from __future__ import annotations

import re
from collections import defaultdict

from hs.api.base import Route
from hs.config import HomeserverConfig
from hs.roles.routes import STREAM_GROUPS, all_routes, routes_for_instance

Target = tuple[str, int]
# Federation /send: hashed by the X-Matrix origin (nginx map below; haproxy: a variable of the request).
FEDERATION_SEND_PREFIX = "/_matrix/federation/v1/send/"
# The origin in `Authorization: X-Matrix origin="name",...` (quoted or not); nginx: a named capture.
NGINX_ORIGIN_MAP = [
    "map $http_authorization $hs_fed_origin {",
    '    "~*origin=\\"?(?<hs_origin>[^\\",]+)" $hs_origin;',
    "    default $remote_addr;",
    "}",
]
# HAProxy 2.6+: the origin out of the whole Authorization header (`fhdr`: `hdr` splits it at commas);
# protected quotes around the regex, no comma in it (it separates arguments). Checked with haproxy -c.
HAPROXY_ORIGIN_EXPR = (r'req.fhdr(Authorization),regsub(\"^.*[Oo][Rr][Ii][Gg][Ii][Nn]=\\\"?([^\\\"\x2c]+).*$\",'
                       r'\"\1\")')


def sticky_key(route: Route) -> str:
    """What a route's upstream hashes on when several instances serve it."""
    if route.group == "event_sending":
        return "room"
    if route.resource == "federation" and any(p.startswith(FEDERATION_SEND_PREFIX) for p in route.full_paths()):
        return "origin"
    return "user"


def path_regex(path: str) -> str:
    """`/rooms/{roomId}/send/{type}/{txnId}` -> `^/rooms/[^/]+/send/[^/]+/[^/]+$`."""
    out = ""
    for part in re.split(r"(\{[^}]+\})", path):
        out += "[^/]+" if part.startswith("{") else re.escape(part).replace("\\/", "/").replace("\\-", "-")
    return f"^{out}$"


def instance_address(config: HomeserverConfig, instance: str, resource: str) -> Target | None:
    for listener in config.listeners_for(instance):
        if resource in listener.all_resources:
            if instance in config.instance_map:
                host = config.instance_map[instance].host
            else:
                host = listener.bind_addresses[0] if listener.bind_addresses else "127.0.0.1"
                host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
            return (host, listener.port)
    return None


def route_targets(config: HomeserverConfig) -> list[tuple[Route, str, list[Target]]]:
    """(route, path regex, instances serving it) for every mounted path, workers preferred over main."""
    served: dict[str, list[Route]] = {i: routes_for_instance(config, i) for i in ["main", *config.workers]}
    rows: list[tuple[Route, str, list[Target]]] = []
    for route in all_routes():
        stream = STREAM_GROUPS.get(route.group)
        if stream is not None:
            # A stream's endpoints go to its writer when it listens for clients (others would forward).
            writer = getattr(config.stream_writers, stream)[0]
            addr = instance_address(config, writer, route.resource)
            if addr is not None:
                rows.extend((route, path_regex(full), [addr]) for full in route.full_paths())
                continue
        workers = []
        for instance in config.workers:
            addr = instance_address(config, instance, route.resource)
            if addr is not None and route in served[instance]:
                workers.append(addr)
        if not workers:
            main = instance_address(config, "main", route.resource)
            workers = [main] if main is not None else []
        for full in route.full_paths():
            rows.append((route, path_regex(full), workers))
    return rows


def render_proxy_config(config: HomeserverConfig, fmt: str, listen: int = 8008) -> str:
    rows = route_targets(config)
    if fmt == "table":
        return "\n".join(f"{r.method}\t{rx}\t{r.group}\t{' '.join(f'{h}:{p}' for h, p in t)}" for r, rx, t in rows)
    # One upstream per (target set, stickiness); regexes grouped under it.
    upstreams: dict[tuple[tuple[Target, ...], str], set[str]] = defaultdict(set)
    for route, rx, targets in rows:
        if targets:
            sticky = sticky_key(route)
            upstreams[(tuple(targets), sticky)].add(rx)
    main = instance_address(config, "main", "client")
    names = {key: f"hs_{i}" for i, key in enumerate(upstreams)}
    if fmt == "nginx":
        return _nginx(upstreams, names, main, listen)
    if fmt == "haproxy":
        return _haproxy(upstreams, names, main, listen)
    raise ValueError(f"unknown format {fmt!r}")


def _nginx(upstreams: dict[tuple[tuple[Target, ...], str], set[str]], names: dict[tuple[tuple[Target, ...], str], str],
           main: Target | None, listen: int) -> str:
    out = [
        "# Generated by `hs routes --format nginx`: include it in nginx's http {} block.",
        "map $uri $hs_room_key {",
        "    ~^/_matrix/client/[^/]+/rooms/(?<room>[^/]+)/ $room;",
        "    default $http_authorization$remote_addr;",
        "}",
        "map $http_authorization $hs_user_key {",
        "    default $http_authorization;",
        "    '' $remote_addr;",
        "}",
        *NGINX_ORIGIN_MAP,
    ]
    keys = {"room": "$hs_room_key", "user": "$hs_user_key", "origin": "$hs_fed_origin"}
    for (targets, sticky), name in names.items():
        out.append(f"upstream {name} {{")
        if len(targets) > 1:
            out.append(f"    hash {keys[sticky]} consistent;")
        out.extend(f"    server {h}:{p};" for h, p in targets)
        out.append("}")
    out += ["server {", f"    listen {listen};", "    client_max_body_size 50M;"]
    proxy = ("proxy_set_header Host $host; proxy_set_header X-Forwarded-For $remote_addr;"
             " proxy_http_version 1.1; proxy_read_timeout 180s;")
    # Longest (most specific) regexes first: nginx uses the first regex location that matches.
    located = sorted(((rx, names[key]) for key, rxs in upstreams.items() for rx in rxs),
                     key=lambda item: (-len(item[0]), item[0]))
    for rx, name in located:
        out.append(f'    location ~ "{rx}" {{ proxy_pass http://{name}; {proxy} }}')
    if main is not None:
        out.append(f"    location / {{ proxy_pass http://{main[0]}:{main[1]}; {proxy} }}")
    out.append("}")
    return "\n".join(out) + "\n"


def _haproxy(upstreams: dict[tuple[tuple[Target, ...], str], set[str]], names: dict[tuple[tuple[Target, ...], str], str],
             main: Target | None, listen: int) -> str:
    out = ["# Generated by `hs routes --format haproxy`.", "frontend matrix", f"    bind *:{listen}",
           "    mode http"]
    for key, name in names.items():
        for rx in sorted(upstreams[key], key=len, reverse=True):
            out.append(f"    acl is_{name} path_reg {rx}")
        out.append(f"    use_backend {name} if is_{name}")
    out.append("    default_backend hs_main")
    for (targets, sticky), name in names.items():
        out += [f"backend {name}", "    mode http"]
        if sticky == "origin":
            # The X-Matrix origin alone (the whole header changes with every request's signature):
            # `balance hash <expr>` needs HAProxy 2.6 or later.
            out += ["    http-request set-var(txn.hs_origin) " + HAPROXY_ORIGIN_EXPR,
                    "    balance hash var(txn.hs_origin)", "    hash-type consistent"]
        else:
            out.append("    balance " + ("uri depth 6" if sticky == "room" else "hdr(Authorization)"))
        out.extend(f"    server s{j} {h}:{p}" for j, (h, p) in enumerate(targets))
    if main is not None:
        out += ["backend hs_main", "    mode http", f"    server main {main[0]}:{main[1]}"]
    return "\n".join(out) + "\n"
