"""Reverse-proxy config rendered from the route table, so nobody copies routing regexes by hand.

Each route goes to the instances that serve it (`routes_for_instance`) on a listener with its resource;
anything no worker serves goes to main. Where several instances serve a route the upstream hashes on a
sticky key: the room for event sending (so one room's sends queue on one worker), the origin server
named in the X-Matrix Authorization header for federation `/send` (so one server's transactions, taken
one at a time, reach one federation reader and do not wait on another's lock), the access token
(or client address) otherwise, so a user's /sync long-polls and multi-step auth stay on one worker.

The media repository is routed by prefix (`/_matrix/media/`, `/_matrix/client/v1/media/`,
`/_matrix/federation/v1/media/`, and the seed's media admin regexes), so any media endpoint, including
ones added later, reaches the instances that run the repository (media workers, else main). Media
workers share their storage, so any of them can serve any request: uploads and the other calls go to the
least busy one; downloads and thumbnails are hashed by media ID, so concurrent requests for one remote
file or one dynamic thumbnail meet in one process, which fetches or makes it once. Request bodies stream
through the proxy (no spooling of uploads to the proxy's disk), responses are buffered in memory only,
and the body limit follows `max_upload_size` with headroom (so hs, not the proxy, refuses an upload just
over the limit, with its own M_TOO_LARGE). A dead media worker is skipped: nginx passes a request that
could not connect to the next server (uploads too: nothing was sent), haproxy checks `/health`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from hs.api.base import Route
from hs.config import HomeserverConfig
from hs.roles.routes import MEDIA_GROUP, STREAM_GROUPS, all_routes, routes_for_instance

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


# The media repository: prefixes (nginx `^~`: no other location is consulted under them) and the
# seed's media admin regexes (`synapse.app.media_repository`).
MEDIA_PREFIXES = ("/_matrix/media/", "/_matrix/client/v1/media/", "/_matrix/federation/v1/media/")
MEDIA_ADMIN_REGEXES = (
    "^/_synapse/admin/v1/purge_media_cache$",
    "^/_synapse/admin/v1/room/.*/media.*$",
    "^/_synapse/admin/v1/user/.*/media.*$",
    "^/_synapse/admin/v1/media/.*$",
    "^/_synapse/admin/v1/quarantine_media/.*$",
    "^/_synapse/admin/v1/users/.*/media$",
)
# Downloads and thumbnails (client, legacy and federation paths), hashed by the media ID.
MEDIA_FILE_REGEX = "^/_matrix/(media/[^/]+|client/v1/media|federation/v1/media)/(download|thumbnail)/"
NGINX_MEDIA_ID_MAP = [
    "map $uri $hs_media_id {",
    '    "~^/_matrix/(media/[^/]+|client/v1/media)/(download|thumbnail)/[^/]+/(?<hs_mid>[^/]+)" $hs_mid;',
    '    "~^/_matrix/federation/v1/media/(download|thumbnail)/(?<hs_fmid>[^/]+)" $hs_fmid;',
    "    default $uri;",
    "}",
]
MIB = 1024 * 1024
# Long enough for a /sync long-poll, a download waiting for an asynchronous upload (timeout_ms, 20 s by
# default) and a slow client's big upload; each is an inactivity timeout, not a whole-request limit.
PROXY_TIMEOUT_S = 180
# A crashed instance: connection refused at once on one host; a vanished host within this. (A
# connection to an instance that is up takes milliseconds; beyond this it is treated as down.)
CONNECT_TIMEOUT_S = 5
# How long a client may take to send a request's headers (HAProxy's `timeout http-request`).
HEADERS_TIMEOUT_S = 30


def body_limit(size: int) -> int:
    """The proxy's body limit for hs's limit `size`: 10% (at least 1 MiB) more, so a body just over
    hs's limit still reaches hs, which refuses it with its own error (and counts nothing)."""
    return size + max(MIB, size // 10)


def nginx_size(size: int) -> str:
    """Bytes as nginx writes sizes, rounded up to KiB."""
    return f"{-(-size // 1024)}k"


def is_media_path(path: str) -> bool:
    """Whether `path` is routed to the media repository by prefix or admin regex."""
    return path.startswith(MEDIA_PREFIXES) or any(re.match(rx, path) for rx in MEDIA_ADMIN_REGEXES)


def media_targets(config: HomeserverConfig) -> list[Target]:
    """The instances that run the media repository and listen for it: media workers, else main."""
    workers = []
    for instance in config.workers:
        addr = instance_address(config, instance, "media")
        if addr is not None and any(r.group == MEDIA_GROUP for r in routes_for_instance(config, instance)):
            workers.append(addr)
    if workers:
        return workers
    main = instance_address(config, "main", "media")
    return [main] if main is not None else []


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


@dataclass(frozen=True)
class WorkerSplit:
    """Which generic workers take /sync (and the other sync-group endpoints) and which the rest of the
    client traffic (`hs routes --sync-workers a,b --client-workers c,d`); by default every generic
    worker with a client listener takes both. A worker named in neither takes nothing of the client
    API (federation and the streams' writers are routed as before)."""

    sync_workers: frozenset[str] | None = None
    client_workers: frozenset[str] | None = None

    def takes(self, instance: str, route: Route) -> bool:
        if route.resource != "client" or route.group == MEDIA_GROUP:
            return True
        chosen = self.sync_workers if route.group == "sync" else self.client_workers
        return chosen is None or instance in chosen

    def check(self, config: HomeserverConfig) -> list[str]:
        """Problems: names that are not generic workers with a client listener."""
        problems = []
        for key, names in (("--sync-workers", self.sync_workers), ("--client-workers", self.client_workers)):
            for name in sorted(names or ()):
                if name not in config.workers or instance_address(config, name, "client") is None:
                    problems.append(f"{key}: {name!r} is not a worker with a client listener")
        return problems


def route_targets(config: HomeserverConfig, split: WorkerSplit | None = None,
                  ) -> list[tuple[Route, str, list[Target]]]:
    """(route, path regex, instances serving it) for every mounted path, workers preferred over main.
    `split` narrows which workers take /sync and which the other client traffic."""
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
            if addr is not None and route in served[instance] and (split is None or split.takes(instance, route)):
                workers.append(addr)
        if not workers:
            main = instance_address(config, "main", route.resource)
            workers = [main] if main is not None else []
        for full in route.full_paths():
            rows.append((route, path_regex(full), workers))
    return rows


def render_proxy_config(config: HomeserverConfig, fmt: str, listen: int | str = 8008,
                        split: WorkerSplit | None = None) -> str:
    """The reverse proxy's config; `listen` is a port or HOST:PORT (the proxy's own address)."""
    rows = route_targets(config, split)
    if fmt == "prometheus":
        return _prometheus(config)
    if fmt == "table":
        return "\n".join(f"{r.method}\t{rx}\t{r.group}\t{' '.join(f'{h}:{p}' for h, p in t)}" for r, rx, t in rows)
    # One upstream per (target set, stickiness); regexes grouped under it.
    upstreams: dict[tuple[tuple[Target, ...], str], set[str]] = defaultdict(set)
    for route, rx, targets in rows:
        if route.group == MEDIA_GROUP and all(is_media_path(p) for p in route.full_paths()):
            continue  # the media locations below take it
        if targets:
            sticky = sticky_key(route)
            upstreams[(tuple(targets), sticky)].add(rx)
    main = instance_address(config, "main", "client")
    names = {key: f"hs_{i}" for i, key in enumerate(upstreams)}
    media = media_targets(config)
    limits = (body_limit(config.max_request_body_size), body_limit(config.max_upload_size))
    if fmt == "nginx":
        return _nginx(upstreams, names, main, listen, media, limits)
    if fmt == "haproxy":
        return _haproxy(upstreams, names, main, listen, media, limits)
    raise ValueError(f"unknown format {fmt!r}")


def metrics_address(config: HomeserverConfig, instance: str) -> Target | None:
    """Where Prometheus reaches an instance's metrics listener: its instance_map host (the name the
    other instances know it by), else the listener's own bind address."""
    for listener in config.listeners_for(instance):
        if listener.type == "metrics":
            if instance in config.instance_map:
                host = config.instance_map[instance].host
            else:
                host = listener.bind_addresses[0] if listener.bind_addresses else "127.0.0.1"
                host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
            return (host, listener.port)
    return None


def _prometheus(config: HomeserverConfig) -> str:
    """A Prometheus scrape config: one job, one static target per instance with a metrics listener,
    labelled `instance` with the instance's name so dashboards group by worker, not by host:port."""
    lines = ["# Generated by `hs routes --format prometheus`: add under prometheus.yml's top level.",
             "scrape_configs:", "  - job_name: hs", "    metrics_path: /_synapse/metrics",
             "    static_configs:"]
    for instance in ["main", *config.workers]:
        target = metrics_address(config, instance)
        if target is None:
            continue
        lines += [f"      - targets: [\"{target[0]}:{target[1]}\"]",
                  f"        labels: {{instance: {instance}, app: {config.app_for(instance)}}}"]
    return "\n".join(lines) + "\n"


Upstreams = dict[tuple[tuple[Target, ...], str], set[str]]
Names = dict[tuple[tuple[Target, ...], str], str]
PROXY = ("proxy_set_header Host $host; proxy_set_header X-Forwarded-For $remote_addr;"
         f" proxy_http_version 1.1; proxy_read_timeout {PROXY_TIMEOUT_S}s;")
TOO_LARGE = '{"errcode":"M_TOO_LARGE","error":"Request body too large"}'
HAPROXY_TOO_LARGE = f"http-request return status 413 content-type application/json string '{TOO_LARGE}'"


def _nginx_media(media: list[Target], upload_limit: int) -> tuple[list[str], list[str]]:
    """nginx upstreams and locations for the media repository."""
    upstreams: list[str] = []
    for name, balance in (("hs_media", "least_conn;"), ("hs_media_files", "hash $hs_media_id consistent;")):
        upstreams.append(f"upstream {name} {{")
        if len(media) > 1:
            upstreams.append(f"    {balance}")
        # One failed connection takes a server out for 10 s (nginx's default, spelled out).
        upstreams.extend(f"    server {h}:{p} max_fails=1 fail_timeout=10s;" for h, p in media)
        upstreams.append("}")
    # Uploads stream to hs as they arrive (proxy_request_buffering off); responses are buffered in
    # memory (512 KiB a request: a thumbnail frees its worker at once) and never spooled to disk
    # (proxy_max_temp_file_size 0: a big download streams at the client's pace). A request that could
    # not connect goes to the next server, an upload too (non_idempotent): with the body unbuffered nginx
    # retries only before sending any of it, so an upload is never stored twice.
    common = (f"client_max_body_size {nginx_size(upload_limit)}; proxy_request_buffering off;"
              " proxy_buffering on; proxy_buffers 8 64k; proxy_busy_buffers_size 128k;"
              f" proxy_max_temp_file_size 0; proxy_send_timeout {PROXY_TIMEOUT_S}s;"
              f" proxy_connect_timeout {CONNECT_TIMEOUT_S}s;"
              " proxy_next_upstream error timeout http_503 non_idempotent; proxy_next_upstream_tries 2; "
              + PROXY)
    locations = []
    for prefix in MEDIA_PREFIXES:
        locations += [f"    location ^~ {prefix} {{",
                      f"        proxy_pass http://hs_media; {common}",
                      f'        location ~ "{MEDIA_FILE_REGEX}" {{ proxy_pass http://hs_media_files; }}',
                      "    }"]
    admin = "(" + "|".join(MEDIA_ADMIN_REGEXES) + ")"
    locations.append(f'    location ~ "{admin}" {{ proxy_pass http://hs_media; {common} }}')
    return upstreams, locations


def _nginx(upstreams: Upstreams, names: Names, main: Target | None, listen: int | str, media: list[Target],
           limits: tuple[int, int]) -> str:
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
        *NGINX_MEDIA_ID_MAP,
    ]
    keys = {"room": "$hs_room_key", "user": "$hs_user_key", "origin": "$hs_fed_origin"}
    for (targets, sticky), name in names.items():
        out.append(f"upstream {name} {{")
        if len(targets) > 1:
            out.append(f"    hash {keys[sticky]} consistent;")
        out.extend(f"    server {h}:{p};" for h, p in targets)
        out.append("}")
    media_upstreams, media_locations = _nginx_media(media, limits[1]) if media else ([], [])
    out += media_upstreams
    # Bodies over the limit: hs's error, not nginx's HTML page.
    out += ["server {", f"    listen {listen};", f"    client_max_body_size {nginx_size(limits[0])};",
            "    error_page 413 @hs_too_large;",
            f"    location @hs_too_large {{ default_type application/json; return 413 '{TOO_LARGE}'; }}",
            *media_locations]
    # Longest (most specific) regexes first: nginx uses the first regex location that matches.
    located = sorted(((rx, names[key]) for key, rxs in upstreams.items() for rx in rxs),
                     key=lambda item: (-len(item[0]), item[0]))
    for rx, name in located:
        out.append(f'    location ~ "{rx}" {{ proxy_pass http://{name}; {PROXY} }}')
    if main is not None:
        out.append(f"    location / {{ proxy_pass http://{main[0]}:{main[1]}; {PROXY} }}")
    out.append("}")
    return "\n".join(out) + "\n"


def _haproxy_media(media: list[Target], upload_limit: int) -> tuple[list[str], list[str]]:
    """haproxy frontend rules and backends for the media repository."""
    rules = [f"    acl is_hs_media path_beg {' '.join(MEDIA_PREFIXES)}",
             *(f"    acl is_hs_media path_reg {rx}" for rx in MEDIA_ADMIN_REGEXES),
             f"    acl is_hs_media_file path_reg {MEDIA_FILE_REGEX}",
             "    use_backend hs_media_files if is_hs_media_file",
             "    use_backend hs_media if is_hs_media"]
    backends: list[str] = []
    for name, balance in (("hs_media", ["balance leastconn"]),
                          ("hs_media_files", ["balance uri path-only", "hash-type consistent"])):
        # haproxy streams request bodies unless told to buffer them; refuse a declared length over the
        # limit here (hs refuses a chunked one while it streams). A dead worker: a failed connection is
        # retried on another server (redispatch) and /health checks take it out of the rotation.
        backends += [f"backend {name}", "    mode http", *(f"    {b}" for b in balance),
                     f"    timeout connect {CONNECT_TIMEOUT_S}s", f"    timeout server {PROXY_TIMEOUT_S}s",
                     "    retries 2", "    option redispatch", "    option httpchk GET /health",
                     f"    {HAPROXY_TOO_LARGE} if {{ req.hdr_val(content-length) gt {upload_limit} }}"]
        backends.extend(f"    server s{j} {h}:{p} check inter 2s fall 2 rise 1" for j, (h, p) in enumerate(media))
    return rules, backends


def _haproxy(upstreams: Upstreams, names: Names, main: Target | None, listen: int | str, media: list[Target],
             limits: tuple[int, int]) -> str:
    # The client's address in X-Forwarded-For (listeners with `x_forwarded` read it), and a bound on
    # how long a client may take to send its request's headers.
    bind = str(listen) if ":" in str(listen) else f"*:{listen}"
    out = ["# Generated by `hs routes --format haproxy`.", "frontend matrix", f"    bind {bind}",
           "    mode http", "    option forwardfor", f"    timeout client {PROXY_TIMEOUT_S}s",
           f"    timeout http-request {HEADERS_TIMEOUT_S}s",
           f"    {HAPROXY_TOO_LARGE} if {{ req.hdr_val(content-length) gt {limits[0]} }}"
           " !{ path_beg " + " ".join(MEDIA_PREFIXES) + " }"]
    media_rules, media_backends = _haproxy_media(media, limits[1]) if media else ([], [])
    out += media_rules
    for key, name in names.items():
        for rx in sorted(upstreams[key], key=len, reverse=True):
            out.append(f"    acl is_{name} path_reg {rx}")
        out.append(f"    use_backend {name} if is_{name}")
    out.append("    default_backend hs_main")
    for (targets, sticky), name in names.items():
        out += [f"backend {name}", "    mode http", f"    timeout connect {CONNECT_TIMEOUT_S}s",
                f"    timeout server {PROXY_TIMEOUT_S}s"]
        if sticky == "origin":
            # The X-Matrix origin alone (the whole header changes with every request's signature):
            # `balance hash <expr>` needs HAProxy 2.6 or later.
            out += ["    http-request set-var(txn.hs_origin) " + HAPROXY_ORIGIN_EXPR,
                    "    balance hash var(txn.hs_origin)", "    hash-type consistent"]
        else:
            out.append("    balance " + ("uri depth 6" if sticky == "room" else "hdr(Authorization)"))
        out.extend(f"    server s{j} {h}:{p}" for j, (h, p) in enumerate(targets))
    out += media_backends
    if main is not None:
        out += ["backend hs_main", "    mode http", f"    timeout connect {CONNECT_TIMEOUT_S}s",
                f"    timeout server {PROXY_TIMEOUT_S}s",
                f"    server main {main[0]}:{main[1]}"]
    return "\n".join(out) + "\n"
