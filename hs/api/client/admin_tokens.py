"""Synapse's admin API for registration tokens, server notices and the server version (admins only,
every call logged with the admin who made it):

- GET    /_synapse/admin/v1/registration_tokens[?valid=true|false]: `{"registration_tokens": [...]}`;
- POST   /_synapse/admin/v1/registration_tokens/new with `token` or `length`, `uses_allowed`,
         `expiry_time`: the new token;
- GET/PUT/DELETE /_synapse/admin/v1/registration_tokens/{token}: the token / changed / `{}`;
- POST   /_synapse/admin/v1/send_server_notice (and PUT .../send_server_notice/{txnId}) with `user_id`,
         `content`, optional `type` and `state_key`: `{"event_id": ...}` (400 unless `server_notices` is
         configured);
- GET    /_synapse/admin/v1/server_version: `{"server_version": ...}` (no token needed, as in Synapse).

A token is `{"token", "uses_allowed", "pending", "completed", "expiry_time"}`. Errors are Synapse's:
401 without a token, 403 M_FORBIDDEN for a non-admin, 404 "No such registration token", 400
M_INVALID_PARAM for bad token fields.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from hs.api.base import Handler, HandlerResult, Route, get_hs, get_requester, parse_json
from hs.api.params import query_enum
from hs.errors import bad_json, forbidden, invalid_param, missing_param
from hs.services.registration_tokens import MAX_TOKEN_LENGTH, RegistrationTokens
from hs.services.server_notices import ServerNotices

logger = logging.getLogger(__name__)

ADMIN = "/_synapse/admin/v1"
MAX_TXN_ID_LENGTH = 255


async def require_admin(request: web.Request) -> str:
    """The requesting admin's user ID (401 without a valid token, 403 for a user who is not an admin)."""
    hs = get_hs(request)
    requester = await get_requester(request)
    if not await hs.user_store.is_admin(requester.user_id):
        raise forbidden("You are not a server admin")
    return requester.user_id


def _token(request: web.Request) -> str:
    token = request.match_info["token"]
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise invalid_param("Invalid token")
    return token


# -- registration tokens -------------------------------------------------------------------------------------
async def list_tokens(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    valid = query_enum(request, "valid", ("true", "false"))
    logger.info("admin %s lists registration tokens (valid: %s)", by, valid)
    tokens = await RegistrationTokens(get_hs(request)).list(None if valid is None else valid == "true")
    return 200, {"registration_tokens": tokens}


async def new_token(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    body = await parse_json(request, allow_empty=True)
    token = await RegistrationTokens(get_hs(request)).create(body)
    logger.info("admin %s made registration token %s", by, token["token"])
    return 200, token


async def get_token(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    token = _token(request)
    logger.info("admin %s reads registration token %s", by, token)
    return 200, await RegistrationTokens(get_hs(request)).get(token)


async def update_token(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    token = _token(request)
    body = await parse_json(request, allow_empty=True)
    logger.info("admin %s changes registration token %s: %s", by, token, body)
    return 200, await RegistrationTokens(get_hs(request)).update(token, body)


async def delete_token(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    token = _token(request)
    await RegistrationTokens(get_hs(request)).delete(token)
    logger.info("admin %s deleted registration token %s", by, token)
    return 200, {}


# -- server notices ------------------------------------------------------------------------------------------
def _notice(body: dict[str, Any]) -> tuple[str, dict[str, Any], str, str | None]:
    user_id = body.get("user_id")
    if user_id is None:
        raise missing_param("Missing 'user_id'")
    if not isinstance(user_id, str) or not user_id.startswith("@") or ":" not in user_id or len(user_id) > 255:
        raise bad_json("'user_id' must be a user ID")
    content = body.get("content")
    if content is None:
        raise missing_param("Missing 'content'")
    if not isinstance(content, dict):
        raise bad_json("'content' must be an object")
    etype = body.get("type", "m.room.message")
    if not isinstance(etype, str) or not etype or len(etype) > 255:
        raise bad_json("'type' must be a string")
    state_key = body.get("state_key")
    if state_key is not None and (not isinstance(state_key, str) or len(state_key) > 255):
        raise bad_json("'state_key' must be a string")
    return user_id, content, etype, state_key


async def send_server_notice(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    hs = get_hs(request)
    notices = ServerNotices(hs)
    notices.config  # noqa: B018 - 400 when server notices are off, before reading the body
    body = await parse_json(request)
    user_id, content, etype, state_key = _notice(body)
    txn = None
    txn_id = request.match_info.get("txnId")
    if txn_id is not None:
        if len(txn_id) > MAX_TXN_ID_LENGTH:
            raise invalid_param("Invalid txnId")
        txn = (notices.system_user, f"admin:{by}", txn_id)
    event_id = await notices.send(user_id, content, etype, state_key, txn=txn)
    logger.info("admin %s sent server notice %s to %s", by, event_id, user_id)
    return 200, {"event_id": event_id}


# -- server version ------------------------------------------------------------------------------------------
async def server_version(request: web.Request) -> HandlerResult:
    """Open to anyone, as Synapse's (the federation API's /version tells as much)."""
    from hs.api.federation.misc import SERVER_VERSION

    return 200, {"server_version": SERVER_VERSION}


def _route(method: str, path: str, handler: Handler) -> Route:
    return Route(method, ADMIN + path, handler, "main", prefixes=(), resource="client")


# /registration_tokens/new before /registration_tokens/{token}, whose shape it has.
ROUTES: list[Route] = [
    _route("GET", "/registration_tokens", list_tokens),
    _route("POST", "/registration_tokens/new", new_token),
    _route("GET", "/registration_tokens/{token}", get_token),
    _route("PUT", "/registration_tokens/{token}", update_token),
    _route("DELETE", "/registration_tokens/{token}", delete_token),
    _route("POST", "/send_server_notice", send_server_notice),
    _route("PUT", "/send_server_notice/{txnId}", send_server_notice),
    _route("GET", "/server_version", server_version),
]
