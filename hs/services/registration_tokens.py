"""Registration tokens (Synapse's admin API "Registration Tokens" and the spec's m.login.registration_token
UIA stage): an admin makes tokens, each with an optional number of uses and expiry; with
`registration_requires_token`, registering takes a valid one.

A registration passing the stage counts as `pending` on the token until it completes (then `completed`);
a token is valid while `pending + completed` is below `uses_allowed` and it has not expired, so tokens
are not over-spent by registrations in flight (Synapse's accounting). A UIA session that passed the stage
and expires without registering gives its pending use back when the registration service prunes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hs.db.stores.registration_tokens import RegistrationTokenStore
from hs.errors import invalid_param, not_found
from hs.util import now_ms, random_string

if TYPE_CHECKING:
    from hs.server import HomeServer

# The characters a token may have (the spec's registration token grammar: [A-Za-z0-9._~-]).
TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-"
MAX_TOKEN_LENGTH = 64
DEFAULT_LENGTH = 16


def _uses_allowed(value: Any) -> int | None:
    if value is None or (type(value) is int and 0 <= value < 2**31):
        return value
    raise invalid_param("uses_allowed must be a non-negative integer or null")


def _expiry_time(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not -(2**63) <= value < 2**63:
        raise invalid_param("expiry_time must be an integer or null")
    if value < now_ms():
        raise invalid_param("expiry_time must not be in the past")
    return value


class RegistrationTokens:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = RegistrationTokenStore(hs.db)

    async def list(self, valid: bool | None) -> list[dict[str, Any]]:
        return await self.store.list(valid, now_ms())

    async def get(self, token: str) -> dict[str, Any]:
        row = await self.store.get(token)
        if row is None:
            raise not_found(f"No such registration token: {token}")
        return row

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """A new token from the request body: `token` as given, else a random one of `length`."""
        if "token" in body:
            token = body["token"]
            if not isinstance(token, str):
                raise invalid_param("token must be a string")
            if not 0 < len(token) <= MAX_TOKEN_LENGTH:
                raise invalid_param("token must not be empty and must not be longer than 64 characters")
            if not set(token) <= set(TOKEN_CHARS):
                raise invalid_param("token must consist only of characters matched by the regex [A-Za-z0-9._~-]")
        else:
            length = body.get("length", DEFAULT_LENGTH)
            if type(length) is not int:
                raise invalid_param("length must be an integer")
            if not 0 < length <= MAX_TOKEN_LENGTH:
                raise invalid_param("length must be greater than zero and not greater than 64")
            token = random_string(length, TOKEN_CHARS)
        uses_allowed = _uses_allowed(body.get("uses_allowed"))
        expiry_time = _expiry_time(body.get("expiry_time"))
        if not await self.store.create(token, uses_allowed, expiry_time):
            raise invalid_param(f"Token already exists: {token}")
        return {"token": token, "uses_allowed": uses_allowed, "pending": 0, "completed": 0,
                "expiry_time": expiry_time}

    async def update(self, token: str, body: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, int | None] = {}
        if "uses_allowed" in body:
            changes["uses_allowed"] = _uses_allowed(body["uses_allowed"])
        if "expiry_time" in body:
            changes["expiry_time"] = _expiry_time(body["expiry_time"])
        row = await self.store.update(token, changes) if changes else await self.store.get(token)
        if row is None:
            raise not_found(f"No such registration token: {token}")
        return row

    async def delete(self, token: str) -> None:
        if not await self.store.delete(token):
            raise not_found(f"No such registration token: {token}")

    async def is_valid(self, token: str) -> bool:
        return await self.store.is_valid(token, now_ms())

    async def start_use(self, token: str) -> bool:
        """The UIA stage: True (and one more pending use) if the token is valid."""
        return await self.store.add_pending(token, now_ms())

    async def finish_use(self, token: str) -> None:
        await self.store.complete(token)

    async def abandon_use(self, token: str) -> None:
        await self.store.release(token)
