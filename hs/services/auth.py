"""Who is making a request: access-token lookup (hashed, cached) and the resulting Requester."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from hs.errors import MatrixError, unknown_token

if TYPE_CHECKING:
    from hs.server import HomeServer


@dataclass(frozen=True)
class Requester:
    user_id: str
    device_id: str
    access_token: str
    is_guest: bool = False


def extract_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise MatrixError(401, "M_MISSING_TOKEN", "Invalid Authorization header")
        return token.strip()
    return request.query.get("access_token")


class Auth:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def get_requester(self, request: web.Request, optional: bool = False) -> Requester | None:
        token = extract_token(request)
        if token is None:
            if optional:
                return None
            raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
        info = await self.hs.user_store.get_token(token)
        if info is None:
            raise unknown_token()
        return Requester(info.user_id, info.device_id, token, info.is_guest)

    async def requester(self, request: web.Request) -> Requester:
        r = await self.get_requester(request)
        assert r is not None
        return r
