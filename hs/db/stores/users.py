"""Users, devices, access tokens, profiles and filters."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hs.db.pool import Connection, Database
from hs.util import LruCache, json_dumps, json_loads, now_ms


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    user_id: str
    device_id: str
    is_guest: bool = False


class UserStore:
    def __init__(self, db: Database, token_cache_size: int = 10000) -> None:
        self.db = db
        self._token_cache: LruCache[str, TokenInfo] = LruCache(token_cache_size, name="db.stores.users.self._token_cache")
        # Set by the server: tells other processes to drop a user's cached tokens.
        self.on_invalidate: Callable[[str | None], None] | None = None

    # -- users ---------------------------------------------------------------------------------------
    async def create_user(self, user_id: str, password_hash: str | None, admin: bool = False,
                          user_type: str | None = None, displayname: str | None = None,
                          device: tuple[str, str | None, str] | None = None, is_guest: bool = False) -> bool:
        """Create a user and profile, and with `device` (ID, display name, access token) its first
        device and token, in one transaction; False if the ID is taken."""

        async def txn(c: Connection) -> bool:
            if await c.fetchval("SELECT 1 FROM users WHERE user_id = $1", user_id):
                return False
            await c.execute(
                "INSERT INTO users (user_id, password_hash, created_ts, admin, user_type, is_guest)"
                " VALUES ($1,$2,$3,$4,$5,$6)",
                user_id, password_hash, now_ms(), int(admin), user_type, int(is_guest),
            )
            await c.execute("INSERT INTO profiles (user_id, displayname) VALUES ($1, $2)", user_id, displayname)
            if device is not None:
                await self._insert_device_and_token(c, user_id, *device)
            return True

        return await self.db.run_transaction("create_user", txn)

    async def upgrade_guest(self, user_id: str, password_hash: str | None) -> bool:
        """Make a guest a full user (with this password), in one transaction with the end of its guest
        access tokens (as on Synapse, a guest token is not good for the upgraded account; its devices
        stay). False if the user is no guest (any more)."""

        async def txn(c: Connection) -> bool:
            if not await c.fetchval("SELECT 1 FROM users WHERE user_id = $1 AND is_guest = 1", user_id):
                return False
            await c.execute("UPDATE users SET is_guest = 0, password_hash = $2 WHERE user_id = $1",
                            user_id, password_hash)
            await c.execute("DELETE FROM access_tokens WHERE user_id = $1", user_id)
            return True

        upgraded = await self.db.run_transaction("upgrade_guest", txn)
        if upgraded:
            self.invalidate_token_cache(user_id)
        return upgraded

    async def get_user(self, user_id: str) -> dict[str, Any] | None:
        return await self.db.fetchrow("SELECT * FROM users WHERE user_id = $1", user_id)

    async def find_user_case_insensitive(self, user_id: str) -> list[str]:
        rows = await self.db.fetch("SELECT user_id FROM users WHERE LOWER(user_id) = LOWER($1)", user_id)
        return [r["user_id"] for r in rows]

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        await self.db.execute("UPDATE users SET password_hash = $2 WHERE user_id = $1", user_id, password_hash)

    async def deactivate(self, user_id: str) -> None:
        """Mark the account deactivated (its tokens stop working) and drop its password."""
        await self.db.execute("UPDATE users SET deactivated = 1, password_hash = NULL WHERE user_id = $1", user_id)

    # -- devices and tokens --------------------------------------------------------------------------
    async def create_device_and_token(self, user_id: str, device_id: str, display_name: str | None,
                                      token: str) -> None:
        async def txn(c: Connection) -> None:
            await self._insert_device_and_token(c, user_id, device_id, display_name, token)

        await self.db.run_transaction("create_device_and_token", txn)

    async def create_device(self, user_id: str, device_id: str, display_name: str | None) -> bool:
        """A device without an access token (an application service manages it, MSC4190); False if
        the user has it already."""
        created = await self.db.fetchval(
            "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts) VALUES ($1,$2,$3,$4)"
            " ON CONFLICT (user_id, device_id) DO NOTHING RETURNING device_id",
            user_id, device_id, display_name, now_ms())
        return created is not None

    @staticmethod
    async def _insert_device_and_token(c: Connection, user_id: str, device_id: str, display_name: str | None,
                                       token: str) -> None:
        exists = await c.fetchval(
            "SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2", user_id, device_id)
        if not exists:
            await c.execute(
                "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts) VALUES ($1,$2,$3,$4)",
                user_id, device_id, display_name, now_ms(),
            )
        await c.execute(
            "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts) VALUES ($1,$2,$3,$4)",
            hash_token(token), user_id, device_id, now_ms(),
        )

    async def get_token(self, token: str) -> TokenInfo | None:
        key = hash_token(token)
        cached = self._token_cache.get(key)
        if cached is not None:
            return cached
        row = await self.db.fetchrow(
            "SELECT t.user_id, t.device_id, u.is_guest FROM access_tokens t JOIN users u USING (user_id)"
            " WHERE t.token_hash = $1 AND u.deactivated = 0",
            key,
        )
        if row is None:
            return None
        info = TokenInfo(row["user_id"], row["device_id"], bool(row["is_guest"]))
        self._token_cache.set(key, info)
        return info

    def invalidate_token_cache(self, user_id: str | None = None) -> None:
        """Drop cached tokens (all, or one user's), here and, through `on_invalidate`, in every
        other process."""
        self.drop_cached_tokens(user_id)
        if self.on_invalidate is not None:
            self.on_invalidate(user_id)

    def drop_cached_tokens(self, user_id: str | None) -> None:
        if user_id is None:
            self._token_cache.clear()
        else:
            self._token_cache.invalidate_where(lambda _k, v: v.user_id == user_id)

    async def delete_token(self, token: str) -> None:
        info = await self.get_token(token)
        await self.db.execute("DELETE FROM access_tokens WHERE token_hash = $1", hash_token(token))
        self._token_cache.pop(hash_token(token))
        if info is not None:
            self.invalidate_token_cache(info.user_id)

    async def delete_devices(self, user_id: str, device_ids: list[str] | None) -> list[str]:
        """Delete devices (all when None) and their tokens; returns the deleted device IDs."""

        async def txn(c: Connection) -> list[str]:
            if device_ids is None:
                rows = await c.fetch("SELECT device_id FROM devices WHERE user_id = $1", user_id)
                ids = [r["device_id"] for r in rows]
            else:
                ids = list(device_ids)
            for d in ids:
                await c.execute("DELETE FROM devices WHERE user_id = $1 AND device_id = $2", user_id, d)
                await c.execute("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2", user_id, d)
                # A logged-out device gets no more push notifications.
                await c.execute("DELETE FROM pushers WHERE user_id = $1 AND device_id = $2", user_id, d)
            return ids

        ids = await self.db.run_transaction("delete_devices", txn)
        self.invalidate_token_cache(user_id)
        return ids

    async def delete_all_tokens(self, user_id: str, keep_token: str | None = None) -> None:
        """Every access token of the user (but `keep_token`, the one a password change came with)."""
        if keep_token is None:
            await self.db.execute("DELETE FROM access_tokens WHERE user_id = $1", user_id)
        else:
            await self.db.execute("DELETE FROM access_tokens WHERE user_id = $1 AND token_hash <> $2",
                                  user_id, hash_token(keep_token))
        self.invalidate_token_cache(user_id)

    async def get_devices(self, user_id: str) -> list[dict[str, Any]]:
        return await self.db.fetch(
            "SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices WHERE user_id = $1"
            " ORDER BY device_id", user_id)

    async def get_device_sessions(self, user_id: str) -> list[dict[str, Any]]:
        """Each device's last sighting (address, time, user agent), for admins' whois."""
        return await self.db.fetch(
            "SELECT device_id, last_seen_ts, last_seen_ip, last_seen_user_agent FROM devices WHERE user_id = $1"
            " ORDER BY device_id", user_id)

    async def is_admin(self, user_id: str) -> bool:
        user = await self.get_user(user_id)
        return bool(user is not None and user.get("admin"))

    async def get_device(self, user_id: str, device_id: str) -> dict[str, Any] | None:
        return await self.db.fetchrow(
            "SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices"
            " WHERE user_id = $1 AND device_id = $2", user_id, device_id)

    async def record_last_seen(self, sightings: list[tuple[str, str, int, str | None, str | None]]) -> None:
        """(user_id, device_id, ts, ip, user_agent): where and when each device was last seen."""
        async def txn(c: Connection) -> None:
            await c.executemany(
                "UPDATE devices SET last_seen_ts = $3, last_seen_ip = $4, last_seen_user_agent = $5"
                " WHERE user_id = $1 AND device_id = $2", sightings)

        await self.db.run_transaction("record_last_seen", txn)

    async def update_device(self, user_id: str, device_id: str, display_name: str | None) -> bool:
        if not await self.get_device(user_id, device_id):
            return False
        await self.db.execute("UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2",
                              user_id, device_id, display_name)
        return True

    # -- profiles ------------------------------------------------------------------------------------
    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        return await self.db.fetchrow("SELECT displayname, avatar_url FROM profiles WHERE user_id = $1", user_id)

    async def set_profile_field(self, user_id: str, field: str, value: str | None) -> None:
        assert field in ("displayname", "avatar_url")
        await self.db.execute(f"UPDATE profiles SET {field} = $2 WHERE user_id = $1", user_id, value)

    # -- filters -------------------------------------------------------------------------------------
    async def add_filter(self, user_id: str, filter_json: dict[str, Any]) -> int:
        async def txn(c: Connection) -> int:
            current = await c.fetchval("SELECT MAX(filter_id) FROM user_filters WHERE user_id = $1", user_id)
            fid = (current if current is not None else -1) + 1
            await c.execute("INSERT INTO user_filters (user_id, filter_id, filter_json) VALUES ($1,$2,$3)",
                            user_id, fid, json_dumps(filter_json))
            return fid

        return await self.db.run_transaction("add_filter", txn)

    async def get_filter(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        raw = await self.db.fetchval(
            "SELECT filter_json FROM user_filters WHERE user_id = $1 AND filter_id = $2", user_id, filter_id)
        return None if raw is None else json_loads(raw)
