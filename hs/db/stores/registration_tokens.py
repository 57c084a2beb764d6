"""Registration tokens (Synapse's registration_tokens table): made by admins, spent by registrations."""

from __future__ import annotations

from typing import Any

from hs.db.pool import Connection, Database

FIELDS = "token, uses_allowed, pending, completed, expiry_time"
# A token is valid while it has uses left (counting registrations in progress) and has not expired.
VALID = ("(uses_allowed IS NULL OR pending + completed < uses_allowed)"
         " AND (expiry_time IS NULL OR expiry_time > $1)")


class RegistrationTokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self, valid: bool | None, now: int) -> list[dict[str, Any]]:
        if valid is None:
            return await self.db.fetch(f"SELECT {FIELDS} FROM registration_tokens ORDER BY token")
        cond = VALID if valid else f"NOT ({VALID})"
        return await self.db.fetch(f"SELECT {FIELDS} FROM registration_tokens WHERE {cond} ORDER BY token", now)

    async def get(self, token: str) -> dict[str, Any] | None:
        return await self.db.fetchrow(f"SELECT {FIELDS} FROM registration_tokens WHERE token = $1", token)

    async def create(self, token: str, uses_allowed: int | None, expiry_time: int | None) -> bool:
        """False if the token exists already."""
        row = await self.db.fetchval(
            "INSERT INTO registration_tokens (token, uses_allowed, expiry_time) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING RETURNING token", token, uses_allowed, expiry_time)
        return row is not None

    async def update(self, token: str, changes: dict[str, int | None]) -> dict[str, Any] | None:
        """Set the given columns (uses_allowed, expiry_time); the row after, None if no such token."""
        async def txn(c: Connection) -> dict[str, Any] | None:
            for column in ("uses_allowed", "expiry_time"):
                if column in changes:
                    await c.execute(f"UPDATE registration_tokens SET {column} = $1 WHERE token = $2",
                                    changes[column], token)
            return await c.fetchrow(f"SELECT {FIELDS} FROM registration_tokens WHERE token = $1", token)

        return await self.db.run_transaction("update_registration_token", txn)

    async def delete(self, token: str) -> bool:
        row = await self.db.fetchval("DELETE FROM registration_tokens WHERE token = $1 RETURNING token", token)
        return row is not None

    async def is_valid(self, token: str, now: int) -> bool:
        row = await self.db.fetchval(f"SELECT 1 FROM registration_tokens WHERE token = $2 AND {VALID}", now, token)
        return row is not None

    async def add_pending(self, token: str, now: int) -> bool:
        """Count one more registration in progress with the token, if it is valid (checked and counted in
        one statement, so two sessions cannot both take a token's last use)."""
        row = await self.db.fetchval(
            f"UPDATE registration_tokens SET pending = pending + 1 WHERE token = $2 AND {VALID} RETURNING token",
            now, token)
        return row is not None

    async def complete(self, token: str) -> None:
        """A registration that passed the stage finished: from pending to completed."""
        await self.db.execute(
            "UPDATE registration_tokens SET pending = CASE WHEN pending > 0 THEN pending - 1 ELSE 0 END,"
            " completed = completed + 1 WHERE token = $1", token)

    async def release(self, token: str) -> None:
        """A session that passed the stage expired without registering."""
        await self.db.execute(
            "UPDATE registration_tokens SET pending = pending - 1 WHERE token = $1 AND pending > 0", token)
