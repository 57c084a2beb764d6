"""What Synapse's users admin API reads and writes beyond hs/db/stores/users.py: the paginated, filtered
user list, one user's details (account, profile, erasure, last seen), the admin / locked /
shadow-banned / deactivated flags and user type, and the expiry of tokens an admin made with
`valid_until_ms`. The columns and table are migration 027's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hs.db.pool import Database

# Synapse's UserSortOrder values (its `order_by` parameter) -> the column sorted on.
USER_ORDERS: dict[str, str] = {
    "name": "u.user_id",
    "displayname": "p.displayname",
    "is_guest": "u.is_guest",
    "admin": "u.admin",
    "deactivated": "u.deactivated",
    "user_type": "u.user_type",
    "avatar_url": "p.avatar_url",
    "shadow_banned": "u.shadow_banned",
    "creation_ts": "u.created_ts",
    "last_seen_ts": "ls.last_seen_ts",
    "locked": "u.locked",
}
FLAGS = ("admin", "locked", "shadow_banned", "deactivated")
# Synapse's `order_by` values of the user media statistics -> the column sorted on.
MEDIA_STATS_ORDERS: dict[str, str] = {
    "user_id": "m.user_id", "displayname": "p.displayname", "media_length": "media_length",
    "media_count": "media_count"}

_USER_COLUMNS = (
    "SELECT u.user_id AS name, u.user_type, u.is_guest, u.admin, u.deactivated, u.shadow_banned,"
    " p.displayname, p.avatar_url, u.created_ts AS creation_ts,"
    " CASE WHEN eu.user_id IS NULL THEN 0 ELSE 1 END AS erased, ls.last_seen_ts, u.locked"
)
_USER_JOINS = (
    " FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id"
    " LEFT JOIN erased_users eu ON eu.user_id = u.user_id"
    " LEFT JOIN (SELECT user_id, MAX(last_seen_ts) AS last_seen_ts FROM devices GROUP BY user_id) ls"
    " ON ls.user_id = u.user_id"
)
_BOOLEANS = ("is_guest", "admin", "deactivated", "shadow_banned", "erased", "locked")


@dataclass(frozen=True)
class UserFilter:
    """The list's filters, as Synapse's v2 GET /users reads them."""

    user_id: str | None = None
    name: str | None = None
    guests: bool = True
    deactivated: bool | None = False  # None: both; False: active users only
    admins: bool | None = None
    locked: bool = False  # False: locked users left out
    not_user_types: tuple[str, ...] = ()  # user types left out; "" stands for users with none


@dataclass(frozen=True)
class UserFlags:
    """What every authenticated request of the user needs to know (cached by the service)."""

    locked: bool
    shadow_banned: bool
    has_expiring_tokens: bool


def _user_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in _BOOLEANS:
        out[key] = bool(out[key])
    return out


class AdminUserStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list_users(self, f: UserFilter, offset: int, limit: int, order_by: str,
                         descending: bool) -> tuple[list[dict[str, Any]], int]:
        """A page of users and how many match. `name` searches the localpart and display name,
        `user_id` the whole ID (ignored with `name`), both case-insensitively, as Synapse."""
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if f.name:
            where.append(f"(LOWER(u.user_id) LIKE {arg('@%' + f.name.lower() + '%:%')}"
                         f" OR LOWER(p.displayname) LIKE {arg('%' + f.name.lower() + '%')})")
        elif f.user_id:
            where.append(f"LOWER(u.user_id) LIKE {arg('%' + f.user_id.lower() + '%')}")
        if not f.guests:
            where.append("u.is_guest = 0")
        if f.deactivated is not None:
            where.append(f"u.deactivated = {int(f.deactivated)}")
        if not f.locked:
            where.append("u.locked = 0")
        if f.admins is not None:
            where.append(f"u.admin = {int(f.admins)}")
        named = [t for t in f.not_user_types if t]
        if named:
            listed = ", ".join(arg(t) for t in named)
            # With "" among them users without a type go too (NOT IN is not true for NULL).
            where.append(f"u.user_type NOT IN ({listed})" if "" in f.not_user_types
                         else f"(u.user_type NOT IN ({listed}) OR u.user_type IS NULL)")
        elif f.not_user_types:
            where.append("u.user_type IS NOT NULL")
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        total = int(await self.db.fetchval("SELECT COUNT(*)" + _USER_JOINS + clause, *args) or 0)
        column = USER_ORDERS[order_by]
        direction = "DESC" if descending else "ASC"
        # NULLs sort as the lowest value on both engines (SQLite's default; PostgreSQL's is the opposite).
        nulls = "NULLS LAST" if descending else "NULLS FIRST"
        sql = (_USER_COLUMNS + _USER_JOINS + clause
               + f" ORDER BY {column} {direction} {nulls}, u.user_id ASC LIMIT {arg(limit)} OFFSET {arg(offset)}")
        rows = await self.db.fetch(sql, *args)
        return [_user_row(r) for r in rows], total

    async def get_user(self, user_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow(_USER_COLUMNS + _USER_JOINS + " WHERE u.user_id = $1", user_id)
        return None if row is None else _user_row(row)

    async def set_flag(self, user_id: str, flag: str, value: bool) -> None:
        assert flag in FLAGS
        await self.db.execute(f"UPDATE users SET {flag} = $2 WHERE user_id = $1", user_id, int(value))

    async def set_user_type(self, user_id: str, user_type: str | None) -> None:
        await self.db.execute("UPDATE users SET user_type = $2 WHERE user_id = $1", user_id, user_type)

    async def flags(self, user_id: str) -> UserFlags | None:
        row = await self.db.fetchrow(
            "SELECT locked, shadow_banned,"
            " (SELECT COUNT(*) FROM access_token_expiry e WHERE e.user_id = u.user_id) AS expiring"
            " FROM users u WHERE user_id = $1", user_id)
        if row is None:
            return None
        return UserFlags(bool(row["locked"]), bool(row["shadow_banned"]), bool(row["expiring"]))

    async def token_valid_until(self, token_hash: str) -> int | None:
        value = await self.db.fetchval(
            "SELECT valid_until_ms FROM access_token_expiry WHERE token_hash = $1", token_hash)
        return None if value is None else int(value)

    async def add_token_expiry(self, token_hash: str, user_id: str, valid_until_ms: int) -> None:
        await self.db.execute(
            "INSERT INTO access_token_expiry (token_hash, user_id, valid_until_ms) VALUES ($1, $2, $3)",
            token_hash, user_id, valid_until_ms)

    async def media_statistics(self, offset: int, limit: int, from_ts: int, until_ts: int | None,
                               order_by: str, descending: bool, search_term: str | None,
                               ) -> tuple[list[dict[str, Any]], int]:
        """Per uploader of local media: how many files (reserved IDs included, as Synapse counts them)
        and their total size, created within [from_ts, until_ts]; `search_term` matches the user ID's
        localpart or the display name, case-insensitively on both engines."""
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if search_term:
            where.append(f"(LOWER(m.user_id) LIKE {arg('@%' + search_term.lower() + '%:%')}"
                         f" OR LOWER(p.displayname) LIKE {arg('%' + search_term.lower() + '%')})")
        if from_ts:
            where.append(f"m.created_ts >= {arg(from_ts)}")
        if until_ts:
            where.append(f"m.created_ts <= {arg(until_ts)}")
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        base = (" FROM local_media m LEFT JOIN profiles p ON p.user_id = m.user_id" + clause
                + " GROUP BY m.user_id, p.displayname")
        total = int(await self.db.fetchval(f"SELECT COUNT(*) FROM (SELECT m.user_id{base}) AS counted", *args) or 0)
        direction = "DESC" if descending else "ASC"
        nulls = "NULLS LAST" if descending else "NULLS FIRST"
        rows = await self.db.fetch(
            "SELECT m.user_id, p.displayname, COUNT(*) AS media_count,"
            f" CAST(SUM(m.media_length) AS BIGINT) AS media_length{base}"
            f" ORDER BY {MEDIA_STATS_ORDERS[order_by]} {direction} {nulls}, m.user_id ASC"
            f" LIMIT {arg(limit)} OFFSET {arg(offset)}", *args)
        return [dict(r) for r in rows], total

    async def devices(self, user_id: str) -> list[dict[str, Any]]:
        return await self.db.fetch(
            "SELECT device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent, user_id"
            " FROM devices WHERE user_id = $1 ORDER BY device_id", user_id)
