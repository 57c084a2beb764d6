"""The key server: this server's published keys (GET /_matrix/key/v2/server) and the notary that
answers for other servers' keys (GET /_matrix/key/v2/query/{serverName}, POST /_matrix/key/v2/query).
None of them is authenticated. hs/federation/keys.py does the work.

Synapse serves /_matrix/key/v2 on listeners with either the `keys` or the `federation` resource, so
each route is listed for both (a listener naming both mounts it once).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, parse_json
from hs.api.params import INT64_MAX, body_object, query_int
from hs.errors import bad_json, invalid_param
from hs.events.auth import is_valid_server_name

# How much one notary request may ask for: each server asked about may cost a fetch.
MAX_QUERY_SERVERS = 100
MAX_QUERY_KEYS_PER_SERVER = 32


async def server_keys(request: web.Request) -> HandlerResult:
    return 200, get_hs(request).keyring.server_keys_response()


def _server_name(name: Any) -> str:
    if not isinstance(name, str) or not is_valid_server_name(name):
        raise invalid_param(f"{name!r} is not a valid server name")
    return name


async def query_one(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    server = _server_name(request.match_info["serverName"])
    minimum = query_int(request, "minimum_valid_until_ts", None, maximum=INT64_MAX)
    entries = await hs.keyring.notary_query({server: {}}, minimum)
    return 200, {"server_keys": entries}


def parse_key_query(body: dict[str, Any]) -> dict[str, dict[str, int | None]]:
    """POST /key/v2/query's `server_keys` as server -> key ID -> minimum_valid_until_ts (None: now)."""
    servers = body_object(body, "server_keys", required=True) or {}
    if len(servers) > MAX_QUERY_SERVERS:
        raise invalid_param(f"At most {MAX_QUERY_SERVERS} servers may be queried at once")
    query: dict[str, dict[str, int | None]] = {}
    for server, keys in servers.items():
        _server_name(server)
        if not isinstance(keys, dict):
            raise bad_json(f"server_keys.{server} must be an object")
        if len(keys) > MAX_QUERY_KEYS_PER_SERVER:
            raise invalid_param(f"At most {MAX_QUERY_KEYS_PER_SERVER} keys per server may be queried")
        wanted: dict[str, int | None] = {}
        for key_id, criteria in keys.items():
            if criteria is None:
                criteria = {}
            if not isinstance(criteria, dict):
                raise bad_json(f"server_keys.{server}.{key_id} must be an object")
            ts = criteria.get("minimum_valid_until_ts")
            if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
                raise bad_json(f"server_keys.{server}.{key_id}.minimum_valid_until_ts must be an integer")
            wanted[key_id] = ts
        query[server] = wanted
    return query


async def query_many(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    query = parse_key_query(await parse_json(request))
    return 200, {"server_keys": await hs.keyring.notary_query(query)}


KEY_PREFIX = "/_matrix/key/v2"
ROUTES: list[Route] = [
    Route(method, KEY_PREFIX + path, handler, "federation", prefixes=(), resource=resource)
    for resource in ("federation", "keys")
    for method, path, handler in (
        ("GET", "/server", server_keys),
        ("GET", "/server/{keyId}", server_keys),  # deprecated: the key ID is ignored, as Synapse does
        ("GET", "/query/{serverName}", query_one),
        ("POST", "/query", query_many),
    )
]
