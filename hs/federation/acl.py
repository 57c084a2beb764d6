"""Server ACLs (`m.room.server_acl`): which servers may take part in a room.

The spec: a server is denied if its name (without the port) matches a `deny` glob, or matches no
`allow` glob, or is an IP literal while `allow_ip_literals` is false. `*` matches any run of
characters and `?` one. The room's servers apply the ACL to every request about the room, and to
every PDU and EDU from a denied server.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from hs.errors import forbidden

if TYPE_CHECKING:
    from hs.server import HomeServer


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
                      re.IGNORECASE | re.DOTALL)


def _host(server_name: str) -> str:
    if server_name.startswith("["):  # [IPv6]:port
        return server_name[: server_name.find("]") + 1]
    return server_name.rsplit(":", 1)[0] if server_name.count(":") == 1 else server_name


def _is_ip_literal(host: str) -> bool:
    if host.startswith("["):
        return True
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() for p in parts)


def _globs(value: Any) -> list[str]:
    return [g for g in value if isinstance(g, str)] if isinstance(value, list) else []


def server_allowed(acl: dict[str, Any], server_name: str) -> bool:
    """Whether an `m.room.server_acl` content lets `server_name` take part in the room."""
    host = _host(server_name)
    if acl.get("allow_ip_literals", True) is False and _is_ip_literal(host):
        return False
    if any(_glob(g).fullmatch(host) for g in _globs(acl.get("deny"))):
        return False
    return any(_glob(g).fullmatch(host) for g in _globs(acl.get("allow")))


async def check_server_acl(hs: HomeServer, origin: str, room_id: str) -> None:
    """403 M_FORBIDDEN when the room's current ACL denies `origin`."""
    acl = await hs.event_store.get_current_state_event(room_id, "m.room.server_acl")
    if acl is not None and not server_allowed(acl.content, origin):
        raise forbidden(f"Server {origin} is banned from room {room_id} by its server ACL")
