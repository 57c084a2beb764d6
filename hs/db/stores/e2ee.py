"""End-to-end encryption storage: to-device inboxes, the device-list change log, device / one-time /
fallback keys, cross-signing keys and signatures, and server-side key backups.

All SQL here runs unchanged on SQLite and PostgreSQL. The one-time-key claim is a single
`DELETE ... RETURNING` inside a transaction, so a key is handed out at most once even when claims race
(SQLite serialises writers; on PostgreSQL the row lock plus `SKIP LOCKED` lets a concurrent claim take
the next key instead of the same one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from hs.db.pool import Connection, Database
from hs.db.stores.where import Where
from hs.util import json_dumps, json_loads, now_ms

JsonDict = dict[str, Any]


def _in_list(values: Sequence[Any], start: int) -> str:
    """`$start, $start+1, ...` placeholders for an IN list (never empty: callers check)."""
    return ", ".join(f"${i}" for i in range(start, start + len(values)))


class E2eeStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- to-device ---------------------------------------------------------------------------------------
    async def max_to_device_position(self) -> int:
        in_table = int(await self.db.fetchval("SELECT COALESCE(MAX(stream_id), 0) FROM device_inbox") or 0)
        recorded = int(await self.db.fetchval(
            "SELECT COALESCE(MAX(position), 0) FROM stream_positions WHERE stream_name = 'to_device'") or 0)
        return max(in_table, recorded)

    async def add_to_device_messages(self, sender: str, sender_device: str, event_type: str, txn_id: str,
                                     rows: list[tuple[int, str, str, JsonDict]], instance: str) -> bool:
        """Store (position, user, device, content) rows unless this transaction ID was seen; False if it was."""

        async def txn(c: Connection) -> bool:
            fresh = await c.fetch(
                "INSERT INTO device_inbox_txns (user_id, device_id, event_type, txn_id, inserted_ts)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING txn_id",
                sender, sender_device, event_type, txn_id, now_ms())
            if not fresh:
                return False
            await c.executemany(
                "INSERT INTO device_inbox (stream_id, user_id, device_id, sender, type, content)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                [(pos, user, device, sender, event_type, json_dumps(content)) for pos, user, device, content in rows])
            if rows:
                # Rows are deleted once delivered; the position must survive that (and restarts).
                top = max(r[0] for r in rows)
                await c.execute(
                    "INSERT INTO stream_positions (stream_name, instance_name, position) VALUES ('to_device', $1, $2)"
                    " ON CONFLICT (stream_name, instance_name) DO UPDATE SET position ="
                    " CASE WHEN stream_positions.position > excluded.position THEN stream_positions.position"
                    " ELSE excluded.position END",
                    instance, top)
            return True

        return await self.db.run_transaction("add_to_device_messages", txn)

    async def get_to_device_messages(self, user_id: str, device_id: str, after: int, upto: int,
                                     limit: int) -> list[JsonDict]:
        rows = await self.db.fetch(
            "SELECT stream_id, sender, type, content FROM device_inbox"
            " WHERE user_id = $1 AND device_id = $2 AND stream_id > $3 AND stream_id <= $4"
            " ORDER BY stream_id LIMIT $5",
            user_id, device_id, after, upto, limit)
        return [{"stream_id": int(r["stream_id"]), "sender": r["sender"], "type": r["type"],
                 "content": json_loads(r["content"])} for r in rows]

    async def delete_to_device_messages(self, user_id: str, device_id: str, upto: int) -> None:
        # A read first: most syncs have nothing to acknowledge, and a write would take SQLite's lock.
        if not await self.db.fetchval(
                "SELECT 1 FROM device_inbox WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3 LIMIT 1",
                user_id, device_id, upto):
            return
        await self.db.execute(
            "DELETE FROM device_inbox WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3",
            user_id, device_id, upto)

    # -- device lists ------------------------------------------------------------------------------------
    async def max_device_list_position(self) -> int:
        return int(await self.db.fetchval("SELECT COALESCE(MAX(stream_id), 0) FROM device_lists_stream") or 0)

    async def add_device_list_change(self, position: int, user_id: str, device_id: str | None) -> None:
        await self.db.execute(
            "INSERT INTO device_lists_stream (stream_id, user_id, device_id) VALUES ($1, $2, $3)",
            position, user_id, device_id)

    async def get_users_with_device_changes(self, after: int, upto: int) -> set[str]:
        rows = await self.db.fetch(
            "SELECT DISTINCT user_id FROM device_lists_stream WHERE stream_id > $1 AND stream_id <= $2",
            after, upto)
        return {r["user_id"] for r in rows}

    async def last_device_change_position(self, user_id: str, before: int | None = None) -> int | None:
        """The user's latest device-list change (one naming a device) below `before`, or overall: the
        `stream_id` / `prev_id` of the `m.device_list_update` EDUs other servers get."""
        if before is None:
            value = await self.db.fetchval(
                "SELECT MAX(stream_id) FROM device_lists_stream WHERE user_id = $1 AND device_id IS NOT NULL",
                user_id)
        else:
            value = await self.db.fetchval(
                "SELECT MAX(stream_id) FROM device_lists_stream WHERE user_id = $1 AND device_id IS NOT NULL"
                " AND stream_id < $2", user_id, before)
        return int(value) if value is not None else None

    async def get_users_sharing_room(self, user_id: str) -> set[str]:
        """Users joined to any room the user is joined to (the user too, if joined anywhere)."""
        rows = await self.db.fetch(
            "SELECT DISTINCT b.state_key AS user_id FROM current_state_events a"
            " JOIN current_state_events b ON a.room_id = b.room_id"
            " WHERE a.type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join'"
            " AND b.type = 'm.room.member' AND b.membership = 'join'",
            user_id)
        return {r["user_id"] for r in rows}

    async def get_membership_changes_in_rooms(self, room_ids: Sequence[str], after: int,
                                              upto: int) -> list[JsonDict]:
        if not room_ids:
            return []
        return await self.db.fetch(
            "SELECT room_id, user_id, membership, stream_ordering FROM room_memberships"
            f" WHERE stream_ordering > $1 AND stream_ordering <= $2 AND room_id IN ({_in_list(room_ids, 3)})"
            " ORDER BY stream_ordering",
            after, upto, *room_ids)

    async def get_joined_members(self, room_ids: Sequence[str]) -> set[str]:
        if not room_ids:
            return set()
        rows = await self.db.fetch(
            "SELECT DISTINCT state_key FROM current_state_events WHERE type = 'm.room.member'"
            f" AND membership = 'join' AND room_id IN ({_in_list(room_ids, 1)})",
            *room_ids)
        return {r["state_key"] for r in rows}

    # -- device keys -------------------------------------------------------------------------------------
    async def get_device_keys(self, user_id: str) -> dict[str, JsonDict]:
        rows = await self.db.fetch(
            "SELECT device_id, key_json FROM e2e_device_keys WHERE user_id = $1", user_id)
        return {r["device_id"]: json_loads(r["key_json"]) for r in rows}

    async def set_device_keys(self, user_id: str, device_id: str, keys: JsonDict) -> bool:
        """Store a device's keys; True if they changed."""
        text = json_dumps(keys)

        async def txn(c: Connection) -> bool:
            old = await c.fetchval(
                "SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2", user_id, device_id)
            if old is not None and json_loads(old) == keys:
                return False
            await c.execute(
                "INSERT INTO e2e_device_keys (user_id, device_id, key_json, ts) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json, ts = excluded.ts",
                user_id, device_id, text, now_ms())
            return True

        return await self.db.run_transaction("set_device_keys", txn)

    async def delete_device_data(self, user_id: str, device_ids: Iterable[str]) -> None:
        """Everything E2EE that belongs to deleted devices: keys, pending to-device messages."""
        ids = list(device_ids)

        async def txn(c: Connection) -> None:
            for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys", "device_inbox"):
                await c.executemany(f"DELETE FROM {table} WHERE user_id = $1 AND device_id = $2",
                                    [(user_id, d) for d in ids])
            await c.executemany(
                "DELETE FROM e2e_cross_signing_signatures WHERE target_user_id = $1 AND target_device_id = $2",
                [(user_id, d) for d in ids])

        await self.db.run_transaction("delete_device_data", txn)

    # -- one-time and fallback keys ----------------------------------------------------------------------
    async def add_one_time_keys(self, user_id: str, device_id: str,
                                keys: list[tuple[str, str, JsonDict]]) -> list[str]:
        """Insert (algorithm, key_id, key) rows; returns the `alg:id`s that already exist with other content
        (nothing is stored then)."""

        async def txn(c: Connection) -> list[str]:
            conflicts: list[str] = []
            new: list[tuple[Any, ...]] = []
            ts = now_ms()
            for algorithm, key_id, key in keys:
                old = await c.fetchval(
                    "SELECT key_json FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2"
                    " AND algorithm = $3 AND key_id = $4", user_id, device_id, algorithm, key_id)
                if old is None:
                    new.append((user_id, device_id, algorithm, key_id, json_dumps(key), ts))
                elif json_loads(old) != key:
                    conflicts.append(f"{algorithm}:{key_id}")
            if conflicts:
                return conflicts
            await c.executemany(
                "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json, ts)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING", new)
            return []

        return await self.db.run_transaction("add_one_time_keys", txn)

    async def count_one_time_keys(self, user_id: str, device_id: str) -> dict[str, int]:
        rows = await self.db.fetch(
            "SELECT algorithm, COUNT(*) AS n FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2"
            " GROUP BY algorithm", user_id, device_id)
        return {r["algorithm"]: int(r["n"]) for r in rows}

    async def set_fallback_keys(self, user_id: str, device_id: str, keys: list[tuple[str, str, JsonDict]]) -> None:
        async def txn(c: Connection) -> None:
            for algorithm, key_id, key in keys:
                text = json_dumps(key)
                old = await c.fetchrow(
                    "SELECT key_id, key_json FROM e2e_fallback_keys WHERE user_id = $1 AND device_id = $2"
                    " AND algorithm = $3", user_id, device_id, algorithm)
                if old is not None and old["key_id"] == key_id and json_loads(old["key_json"]) == key:
                    continue  # the same key again keeps its `used` flag
                await c.execute(
                    "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)"
                    " VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (user_id, device_id, algorithm) DO UPDATE"
                    " SET key_id = excluded.key_id, key_json = excluded.key_json, used = 0",
                    user_id, device_id, algorithm, key_id, text)

        await self.db.run_transaction("set_fallback_keys", txn)

    async def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        rows = await self.db.fetch(
            "SELECT algorithm FROM e2e_fallback_keys WHERE user_id = $1 AND device_id = $2 AND used = 0"
            " ORDER BY algorithm", user_id, device_id)
        return [r["algorithm"] for r in rows]

    async def claim_key(self, user_id: str, device_id: str, algorithm: str) -> tuple[str, JsonDict] | None:
        """Take one one-time key of the algorithm (removing it), else the fallback key (marking it used)."""
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.db.engine == "postgres" else ""

        async def txn(c: Connection) -> tuple[str, JsonDict] | None:
            row = await c.fetchrow(
                "DELETE FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3"
                " AND key_id = (SELECT key_id FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2"
                f" AND algorithm = $3 ORDER BY key_id LIMIT 1{skip_locked}) RETURNING key_id, key_json",
                user_id, device_id, algorithm)
            if row is None:
                row = await c.fetchrow(
                    "UPDATE e2e_fallback_keys SET used = 1 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3"
                    " RETURNING key_id, key_json", user_id, device_id, algorithm)
            if row is None:
                return None
            return f"{algorithm}:{row['key_id']}", json_loads(row["key_json"])

        return await self.db.run_transaction("claim_key", txn)

    # -- cross-signing -----------------------------------------------------------------------------------
    async def get_cross_signing_keys(self, user_id: str) -> dict[str, JsonDict]:
        rows = await self.db.fetch(
            "SELECT key_type, key_json FROM e2e_cross_signing_keys WHERE user_id = $1", user_id)
        return {r["key_type"]: json_loads(r["key_json"]) for r in rows}

    async def set_cross_signing_keys(self, user_id: str, keys: dict[str, tuple[str, JsonDict]]) -> None:
        """key_type -> (public key, key json)."""

        async def txn(c: Connection) -> None:
            for key_type, (public_key, key) in keys.items():
                await c.execute(
                    "INSERT INTO e2e_cross_signing_keys (user_id, key_type, public_key, key_json, ts)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, key_type) DO UPDATE"
                    " SET public_key = excluded.public_key, key_json = excluded.key_json, ts = excluded.ts",
                    user_id, key_type, public_key, json_dumps(key), now_ms())

        await self.db.run_transaction("set_cross_signing_keys", txn)

    async def add_signatures(self, rows: list[tuple[str, str, str, str, str]]) -> None:
        """(signer user, signer key id, target user, target device or key, signature)."""

        async def txn(c: Connection) -> None:
            await c.executemany(
                "INSERT INTO e2e_cross_signing_signatures"
                " (user_id, key_id, target_user_id, target_device_id, signature) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (user_id, key_id, target_user_id, target_device_id)"
                " DO UPDATE SET signature = excluded.signature", rows)

        await self.db.run_transaction("add_signatures", txn)

    async def get_signatures_for(self, target_user_id: str) -> list[JsonDict]:
        return await self.db.fetch(
            "SELECT user_id, key_id, target_device_id, signature FROM e2e_cross_signing_signatures"
            " WHERE target_user_id = $1", target_user_id)

    # -- key backup --------------------------------------------------------------------------------------
    async def get_backup_version(self, user_id: str, version: int | None) -> JsonDict | None:
        """A (non-deleted) backup version, or the latest one when `version` is None."""
        if version is None:
            return await self.db.fetchrow(
                "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions"
                " WHERE user_id = $1 AND deleted = 0 ORDER BY version DESC LIMIT 1", user_id)
        return await self.db.fetchrow(
            "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions"
            " WHERE user_id = $1 AND version = $2 AND deleted = 0", user_id, version)

    async def create_backup_version(self, user_id: str, algorithm: str, auth_data: Any) -> int:
        async def txn(c: Connection) -> int:
            if c.engine == "postgres":
                # Serialise concurrent creations for the user, so they get distinct numbers.
                await c.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", user_id)
            current = await c.fetchval(
                "SELECT MAX(version) FROM e2e_room_keys_versions WHERE user_id = $1", user_id)
            version = int(current or 0) + 1
            await c.execute(
                "INSERT INTO e2e_room_keys_versions (user_id, version, algorithm, auth_data, etag, deleted)"
                " VALUES ($1, $2, $3, $4, 0, 0)", user_id, version, algorithm, json_dumps(auth_data))
            return version

        return await self.db.run_transaction("create_backup_version", txn)

    async def update_backup_version(self, user_id: str, version: int, auth_data: Any) -> None:
        await self.db.execute(
            "UPDATE e2e_room_keys_versions SET auth_data = $3 WHERE user_id = $1 AND version = $2",
            user_id, version, json_dumps(auth_data))

    async def delete_backup_version(self, user_id: str, version: int) -> bool:
        async def txn(c: Connection) -> bool:
            found = await c.fetch(
                "UPDATE e2e_room_keys_versions SET deleted = 1 WHERE user_id = $1 AND version = $2 AND deleted = 0"
                " RETURNING version", user_id, version)
            if found:
                await c.execute("DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2", user_id, version)
            return bool(found)

        return await self.db.run_transaction("delete_backup_version", txn)

    async def count_backup_keys(self, user_id: str, version: int) -> int:
        return int(await self.db.fetchval(
            "SELECT COUNT(*) FROM e2e_room_keys WHERE user_id = $1 AND version = $2", user_id, version) or 0)

    async def get_backup_keys(self, user_id: str, version: int, room_id: str | None,
                              session_id: str | None) -> list[JsonDict]:
        where = _backup_keys(user_id, version, room_id, session_id)
        return await self.db.fetch(
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data"
            f" FROM e2e_room_keys WHERE {where} ORDER BY room_id, session_id", *where.args)

    async def put_backup_keys(self, user_id: str, version: int,
                              keys: list[tuple[str, str, JsonDict]]) -> tuple[int, int] | None:
        """Store (room, session, key data) where the spec's rules prefer the new key; returns (etag, count),
        or None if `version` is no longer the current version."""

        async def txn(c: Connection) -> tuple[int, int] | None:
            row = await c.fetchrow(
                "SELECT version, etag FROM e2e_room_keys_versions WHERE user_id = $1 AND deleted = 0"
                " ORDER BY version DESC LIMIT 1", user_id)
            if row is None or int(row["version"]) != version:
                return None
            etag = int(row["etag"])
            changed = False
            for room_id, session_id, data in keys:
                old = await c.fetchrow(
                    "SELECT first_message_index, forwarded_count, is_verified FROM e2e_room_keys"
                    " WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4",
                    user_id, version, room_id, session_id)
                if old is not None and not _should_replace(old, data):
                    continue
                changed = True
                await c.execute(
                    "INSERT INTO e2e_room_keys (user_id, version, room_id, session_id, first_message_index,"
                    " forwarded_count, is_verified, session_data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                    " ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET"
                    " first_message_index = excluded.first_message_index,"
                    " forwarded_count = excluded.forwarded_count, is_verified = excluded.is_verified,"
                    " session_data = excluded.session_data",
                    user_id, version, room_id, session_id, data["first_message_index"], data["forwarded_count"],
                    int(bool(data["is_verified"])), json_dumps(data["session_data"]))
            return await _backup_written(c, user_id, version, etag, changed)

        return await self.db.run_transaction("put_backup_keys", txn)

    async def delete_backup_keys(self, user_id: str, version: int, room_id: str | None,
                                 session_id: str | None) -> tuple[int, int]:
        async def txn(c: Connection) -> tuple[int, int]:
            where = _backup_keys(user_id, version, room_id, session_id)
            deleted = await c.fetch(f"DELETE FROM e2e_room_keys WHERE {where} RETURNING session_id", *where.args)
            etag = int(await c.fetchval(
                "SELECT etag FROM e2e_room_keys_versions WHERE user_id = $1 AND version = $2",
                user_id, version) or 0)
            return await _backup_written(c, user_id, version, etag, bool(deleted))

        return await self.db.run_transaction("delete_backup_keys", txn)


def _backup_keys(user_id: str, version: int, room_id: str | None, session_id: str | None) -> Where:
    """A backup's keys: all, one room's, or one session's (a session only within a room)."""
    where = Where()
    where.add("user_id = {} AND version = {}", user_id, version)
    if room_id is not None:
        where.add("room_id = {}", room_id)
        if session_id is not None:
            where.add("session_id = {}", session_id)
    return where


async def _backup_written(c: Connection, user_id: str, version: int, etag: int,
                          changed: bool) -> tuple[int, int]:
    """After a write to a backup: its etag (moved on if the write changed anything) and key count."""
    if changed:
        etag += 1
        await c.execute("UPDATE e2e_room_keys_versions SET etag = $3 WHERE user_id = $1 AND version = $2",
                        user_id, version, etag)
    count = int(await c.fetchval(
        "SELECT COUNT(*) FROM e2e_room_keys WHERE user_id = $1 AND version = $2", user_id, version) or 0)
    return etag, count


def _should_replace(old: JsonDict, new: JsonDict) -> bool:
    """The spec's rule: prefer verified, then the lower first_message_index, then the lower forwarded_count."""
    old_verified, new_verified = bool(old["is_verified"]), bool(new["is_verified"])
    if old_verified != new_verified:
        return new_verified
    if new["first_message_index"] != old["first_message_index"]:
        return bool(new["first_message_index"] < old["first_message_index"])
    return bool(new["forwarded_count"] < old["forwarded_count"])
