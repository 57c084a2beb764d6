"""SQL of application service transactions (hs/appservice/sender.py): each service's stream positions,
acknowledged transaction and backoff (`appservice_state`), the transactions stored before they are sent
(`appservice_txns`), and what transactions carry besides events (to-device messages, presence,
MSC3202 key counts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hs.db.pool import Connection, Database
from hs.util import json_dumps, json_loads, now_ms

STREAMS = ("events", "receipts", "presence", "to_device", "device_lists")


def _marks(count: int, first: int = 1) -> str:
    return ",".join(f"${i}" for i in range(first, first + count))


@dataclass
class ServiceState:
    as_id: str
    positions: dict[str, int]  # stream name (STREAMS) -> position
    last_txn_id: int
    last_acked_txn_id: int
    failures: int
    failed_ts: int


@dataclass
class StoredTxn:
    txn_id: int
    event_ids: list[str]
    extra: dict[str, Any]


class AppServiceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- state -------------------------------------------------------------------------------------------
    async def get_state(self, as_id: str) -> ServiceState | None:
        r = await self.db.fetchrow(
            "SELECT as_id, events_position, receipts_position, presence_position, to_device_position,"
            " device_lists_position, last_txn_id, last_acked_txn_id, failures, failed_ts"
            " FROM appservice_state WHERE as_id = $1", as_id)
        if r is None:
            return None
        return ServiceState(r["as_id"], {s: int(r[f"{s}_position"]) for s in STREAMS}, int(r["last_txn_id"]),
                            int(r["last_acked_txn_id"]), int(r["failures"]), int(r["failed_ts"]))

    async def create_state(self, as_id: str, positions: dict[str, int]) -> None:
        """A service seen for the first time: it is owed what comes after these positions."""
        await self.db.execute(
            "INSERT INTO appservice_state (as_id, events_position, receipts_position, presence_position,"
            " to_device_position, device_lists_position) VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (as_id) DO NOTHING", as_id, *(positions[s] for s in STREAMS))

    async def set_failures(self, as_id: str, failures: int) -> None:
        await self.db.execute("UPDATE appservice_state SET failures = $2, failed_ts = $3 WHERE as_id = $1",
                              as_id, failures, now_ms() if failures else 0)

    # -- transactions ------------------------------------------------------------------------------------
    async def store_txn(self, as_id: str, event_ids: list[str], extra: dict[str, Any],
                        positions: dict[str, int]) -> int:
        """Store the next transaction and move the service's positions past what it carries, all or
        nothing: whatever happens next, it is either sent later or was never taken. On PostgreSQL one
        statement (a transaction delivered at once waits for it), elsewhere one transaction."""
        moved = (as_id, *(positions[s] for s in STREAMS))
        advance = ("UPDATE appservice_state SET last_txn_id = last_txn_id + 1, events_position = $2,"
                   " receipts_position = $3, presence_position = $4, to_device_position = $5,"
                   " device_lists_position = $6 WHERE as_id = $1 RETURNING last_txn_id")
        if self.db.engine == "postgres":
            txn_id = await self.db.fetchval(
                f"WITH s AS ({advance}) INSERT INTO appservice_txns (as_id, txn_id, event_ids, extra, created_ts)"
                " SELECT $1, s.last_txn_id, $7, $8, $9 FROM s RETURNING txn_id",
                *moved, json_dumps(event_ids), json_dumps(extra), now_ms())
        else:
            async def txn(c: Connection) -> Any:
                new_id = await c.fetchval(advance, *moved)
                if new_id is not None:
                    await c.execute("INSERT INTO appservice_txns (as_id, txn_id, event_ids, extra, created_ts)"
                                    " VALUES ($1, $2, $3, $4, $5)",
                                    as_id, new_id, json_dumps(event_ids), json_dumps(extra), now_ms())
                return new_id

            txn_id = await self.db.run_transaction("store_appservice_txn", txn)
        if txn_id is None:
            raise RuntimeError(f"application service {as_id} has no stored state")  # create_state comes first
        return int(txn_id)

    async def advance_positions(self, as_id: str, positions: dict[str, int]) -> None:
        """Nothing for the service in what was read: move its positions on without a transaction."""
        await self.db.execute(
            "UPDATE appservice_state SET events_position = $2, receipts_position = $3, presence_position = $4,"
            " to_device_position = $5, device_lists_position = $6 WHERE as_id = $1",
            as_id, *(positions[s] for s in STREAMS))

    async def oldest_unacked_txn(self, as_id: str) -> StoredTxn | None:
        r = await self.db.fetchrow(
            "SELECT txn_id, event_ids, extra FROM appservice_txns WHERE as_id = $1 ORDER BY txn_id LIMIT 1", as_id)
        if r is None:
            return None
        return StoredTxn(int(r["txn_id"]), json_loads(r["event_ids"]), json_loads(r["extra"]))

    async def complete_txn(self, as_id: str, txn_id: int) -> None:
        """The service acknowledged the transaction: forget it, and any backoff (one statement on
        PostgreSQL, one transaction elsewhere)."""
        forget = "DELETE FROM appservice_txns WHERE as_id = $1 AND txn_id <= $2"
        acked = "UPDATE appservice_state SET last_acked_txn_id = $2, failures = 0, failed_ts = 0 WHERE as_id = $1"
        if self.db.engine == "postgres":
            await self.db.execute(f"WITH d AS ({forget}) {acked}", as_id, txn_id)
            return

        async def txn(c: Connection) -> None:
            await c.execute(forget, as_id, txn_id)
            await c.execute(acked, as_id, txn_id)

        await self.db.run_transaction("complete_appservice_txn", txn)

    # -- what transactions carry ---------------------------------------------------------------------------
    async def room_aliases(self, room_id: str) -> list[str]:
        rows = await self.db.fetch("SELECT room_alias FROM room_aliases WHERE room_id = $1", room_id)
        return [r["room_alias"] for r in rows]

    async def receipts_between(self, after: int, upto: int, limit: int) -> list[Any]:
        """Public receipts written in (after, upto] (a private one is for its owner alone)."""
        return await self.db.fetch(
            "SELECT room_id, receipt_type, user_id, thread_id, event_id, ts, stream_id FROM receipts"
            " WHERE stream_id > $1 AND stream_id <= $2 AND receipt_type <> 'm.read.private'"
            " ORDER BY stream_id LIMIT $3", after, upto, limit)

    async def presence_between(self, after: int, upto: int, limit: int) -> list[Any]:
        return await self.db.fetch(
            "SELECT user_id, state, status_msg, last_active_ts, currently_active, stream_id FROM presence"
            " WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id LIMIT $3", after, upto, limit)

    async def to_device_between(self, after: int, upto: int, limit: int) -> list[Any]:
        return await self.db.fetch(
            "SELECT stream_id, user_id, device_id, sender, type, content FROM device_inbox"
            " WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id LIMIT $3", after, upto, limit)

    async def device_list_changes_between(self, after: int, upto: int) -> set[str]:
        rows = await self.db.fetch(
            "SELECT DISTINCT user_id FROM device_lists_stream WHERE stream_id > $1 AND stream_id <= $2",
            after, upto)
        return {r["user_id"] for r in rows}

    async def rooms_of_users(self, user_ids: Sequence[str]) -> dict[str, set[str]]:
        """Joined rooms of each user."""
        if not user_ids:
            return {}
        rows = await self.db.fetch(
            "SELECT state_key, room_id FROM current_state_events WHERE type = 'm.room.member'"
            f" AND membership = 'join' AND state_key IN ({_marks(len(user_ids))})", *user_ids)
        out: dict[str, set[str]] = {}
        for r in rows:
            out.setdefault(r["state_key"], set()).add(r["room_id"])
        return out

    async def one_time_key_counts(self, user_ids: Sequence[str]) -> dict[str, dict[str, dict[str, int]]]:
        """user -> device -> algorithm -> unclaimed one-time keys, every device of the users listed
        (signed_curve25519 at 0 when it has none, as Synapse reports it)."""
        if not user_ids:
            return {}
        out: dict[str, dict[str, dict[str, int]]] = {}
        for r in await self.db.fetch(
                f"SELECT user_id, device_id FROM devices WHERE user_id IN ({_marks(len(user_ids))})", *user_ids):
            out.setdefault(r["user_id"], {})[r["device_id"]] = {"signed_curve25519": 0}
        for r in await self.db.fetch(
                "SELECT user_id, device_id, algorithm, COUNT(*) AS n FROM e2e_one_time_keys"
                f" WHERE user_id IN ({_marks(len(user_ids))}) GROUP BY user_id, device_id, algorithm", *user_ids):
            out.setdefault(r["user_id"], {}).setdefault(r["device_id"], {})[r["algorithm"]] = int(r["n"])
        return out

    async def unused_fallback_key_types(self, user_ids: Sequence[str]) -> dict[str, dict[str, list[str]]]:
        """user -> device -> algorithms of its unused fallback keys, every device of the users listed."""
        if not user_ids:
            return {}
        out: dict[str, dict[str, list[str]]] = {}
        for r in await self.db.fetch(
                f"SELECT user_id, device_id FROM devices WHERE user_id IN ({_marks(len(user_ids))})", *user_ids):
            out.setdefault(r["user_id"], {})[r["device_id"]] = []
        for r in await self.db.fetch(
                "SELECT user_id, device_id, algorithm FROM e2e_fallback_keys WHERE used = 0"
                f" AND user_id IN ({_marks(len(user_ids))}) ORDER BY algorithm", *user_ids):
            out.setdefault(r["user_id"], {}).setdefault(r["device_id"], []).append(r["algorithm"])
        return out
