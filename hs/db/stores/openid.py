"""OpenID tokens: who each (hashed) token belongs to, until when."""

from __future__ import annotations

from hs.db.pool import Database
from hs.db.stores.users import hash_token


class OpenIdStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, token: str, user_id: str, valid_until_ms: int) -> None:
        await self.db.execute(
            "INSERT INTO openid_tokens (token_hash, user_id, valid_until_ms) VALUES ($1, $2, $3)",
            hash_token(token), user_id, valid_until_ms)

    async def get_user(self, token: str, now_ms: int) -> str | None:
        """The user a token belongs to while it is valid and the account active; else None."""
        user_id = await self.db.fetchval(
            "SELECT t.user_id FROM openid_tokens t JOIN users u USING (user_id)"
            " WHERE t.token_hash = $1 AND t.valid_until_ms > $2 AND u.deactivated = 0",
            hash_token(token), now_ms)
        return None if user_id is None else str(user_id)

    async def delete_expired(self, now_ms: int) -> None:
        await self.db.execute("DELETE FROM openid_tokens WHERE valid_until_ms <= $1", now_ms)
