"""Synapse's shared-secret registration API (/_synapse/admin/v1/register), used by `hs register-user`.

GET hands out a single-use nonce (valid for 60 s); POST registers a user when `mac` is the hex
HMAC-SHA1, keyed with `registration_shared_secret`, of ``nonce\\0username\\0password\\0admin|notadmin``
(plus ``\\0user_type`` when one is given). It works while public registration is closed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, parse_json
from hs.errors import bad_json, bad_request, forbidden

if TYPE_CHECKING:
    from hs.services.registration import Registration

ADMIN_REGISTER = "/_synapse/admin/v1/register"


def _field(body: dict[str, Any], key: str, max_len: int = 512) -> str:
    value = body.get(key)
    if not isinstance(value, str) or "\x00" in value or len(value) > max_len:
        raise bad_json(f"Invalid {key}")
    return value


async def get_nonce(request: web.Request) -> HandlerResult:
    reg: Registration = get_hs(request).registration
    return 200, {"nonce": reg.new_nonce()}


async def register_with_shared_secret(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    reg: Registration = hs.registration
    secret = hs.config.get_registration_shared_secret()
    if not secret:
        raise bad_request("Shared secret registration is not enabled")
    body = await parse_json(request)
    nonce = body.get("nonce")
    if nonce is None:
        raise bad_json("nonce must be specified")
    if not isinstance(nonce, str) or not reg.use_nonce(nonce):
        raise bad_request("unrecognised nonce")
    username = _field(body, "username")
    password = _field(body, "password")
    admin = body.get("admin", False)
    if not isinstance(admin, bool):
        raise bad_json("Invalid admin")
    user_type = body.get("user_type")
    if user_type is not None and not isinstance(user_type, str):
        raise bad_json("Invalid user type")
    displayname = body.get("displayname")
    if displayname is not None and not isinstance(displayname, str):
        raise bad_json("Invalid displayname")
    got_mac = body.get("mac")
    if not isinstance(got_mac, str):
        raise bad_json("mac must be specified")

    parts = [nonce, username, password, "admin" if admin else "notadmin"]
    if user_type is not None:
        parts.append(user_type)
    want_mac = hmac.new(secret.encode(), b"\x00".join(p.encode() for p in parts), hashlib.sha1).hexdigest()
    if not hmac.compare_digest(want_mac.encode(), got_mac.lower().encode()):
        raise forbidden("HMAC incorrect")

    localpart = username.lower()
    reg.check_localpart(localpart)
    password_hash = await reg.hash_password(reg.validate_password(password))
    login = await reg.register_and_login(localpart, password_hash, admin=admin, user_type=user_type,
                                         displayname=displayname or None)
    return 200, {"user_id": login.user_id, "home_server": hs.server_name,
                 "access_token": login.access_token, "device_id": login.device_id}


ROUTES: list[Route] = [
    Route("GET", ADMIN_REGISTER, get_nonce, "main", prefixes=(), resource="client"),
    Route("POST", ADMIN_REGISTER, register_with_shared_secret, "main", prefixes=(), resource="client"),
]
