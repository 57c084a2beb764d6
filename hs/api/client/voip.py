"""GET /voip/turnServer: credentials for the TURN servers the admin configured (`turn_uris`).

With `turn_shared_secret` the credentials follow the TURN REST API that coturn and others implement
(`use-auth-secret`): the username is "<expiry unix time>:<user ID>" and the password the base64 of its
HMAC-SHA1 under the shared secret, so the TURN server checks them without asking us. Otherwise the
fixed `turn_username` / `turn_password`. With neither, or no URIs, the answer is an empty object, as
Synapse gives: clients then call without a relay.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from aiohttp import web

from hs.api.base import HandlerResult, JsonDict, Route, get_hs, get_requester
from hs.config import HomeserverConfig


def turn_credentials(config: HomeserverConfig, user_id: str, now_s: float | None = None) -> JsonDict:
    """The /voip/turnServer body for `user_id` (empty when no TURN server is configured)."""
    if not config.turn_uris:
        return {}
    ttl_s = config.turn_user_lifetime // 1000
    secret = config.get_turn_shared_secret()
    if secret:
        expiry = int(now_s if now_s is not None else time.time()) + ttl_s
        username = f"{expiry}:{user_id}"
        digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
        password = base64.b64encode(digest).decode()
    elif config.turn_username and config.turn_password:
        username, password = config.turn_username, config.turn_password
    else:
        return {}
    return {"username": username, "password": password, "uris": list(config.turn_uris), "ttl": ttl_s}


async def turn_server(request: web.Request) -> HandlerResult:
    # (A guest reaches this only with `turn_allow_guests`: the auth service's guest allowlist says so.)
    requester = await get_requester(request)
    return 200, turn_credentials(get_hs(request).config, requester.user_id)


ROUTES: list[Route] = [
    Route("GET", "/voip/turnServer", turn_server, "client", prefixes=(
        "/_matrix/client/v3", "/_matrix/client/r0", "/_matrix/client/api/v1")),
]
