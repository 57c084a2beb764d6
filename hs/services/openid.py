"""OpenID tokens: a user proves who they are to a third-party service (an integration manager, a
widget host) by handing it a token this server issued; the service asks this server whose token it
is (`GET /_matrix/federation/v1/openid/userinfo`). The tokens prove identity and nothing else: they
are not access tokens. They last an hour and are stored hashed."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from hs.db.stores.openid import OpenIdStore
from hs.errors import forbidden, guest_access_forbidden, missing_token, unknown_token
from hs.events.event import JsonDict
from hs.util import now_ms

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester

TOKEN_LIFETIME_MS = 3_600_000


class OpenIdTokens:
    """Cheap to make (it holds no state of its own): handlers make one per request."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = OpenIdStore(hs.db)

    async def request_token(self, requester: Requester, user_id: str) -> JsonDict:
        """A new token for the requester (`user_id` must be them; guests get none, as on Synapse)."""
        if user_id != requester.user_id:
            raise forbidden("Cannot request tokens for other users.")
        if requester.is_guest:
            raise guest_access_forbidden("Guest access is not allowed")
        now = now_ms()
        await self.store.delete_expired(now)  # keeps the table to the tokens of the last hour
        token = secrets.token_urlsafe(32)
        await self.store.add(token, user_id, now + TOKEN_LIFETIME_MS)
        return {"access_token": token, "token_type": "Bearer", "matrix_server_name": self.hs.server_name,
                "expires_in": TOKEN_LIFETIME_MS // 1000}

    async def userinfo(self, token: str | None) -> JsonDict:
        """`{"sub": user_id}` for a valid token; 401 M_MISSING_TOKEN without one, M_UNKNOWN_TOKEN for
        an unknown or expired one."""
        if not token:
            raise missing_token("Access Token required")
        user_id = await self.store.get_user(token, now_ms())
        if user_id is None:
            raise unknown_token("Access Token unknown or expired")
        return {"sub": user_id}
