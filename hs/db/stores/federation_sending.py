"""SQL of outbound federation: destinations (progress, backoff, leases), the durable EDU outbox, relayed
events, and each federation sender's position in the events stream."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hs.db.pool import Database
from hs.util import json_dumps, json_loads


def _marks(count: int, first: int = 1) -> str:
    """`$first, ..., $(first+count-1)`: placeholders for an IN list (both engines take them)."""
    return ",".join(f"${i}" for i in range(first, first + count))


def _suffix_pattern(suffix: str) -> str:
    """A LIKE ... ESCAPE '\\' pattern for strings ending with `suffix`."""
    return "%" + suffix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass
class DestinationRow:
    destination: str
    last_successful_stream_ordering: int | None
    retry_last_ts: int
    retry_interval: int
    failure_ts: int | None
    lease_owner: str | None
    lease_expires_ts: int

    def to_admin_json(self) -> dict[str, Any]:
        """Synapse's admin API shape for one destination."""
        return {"destination": self.destination, "retry_last_ts": self.retry_last_ts,
                "retry_interval": self.retry_interval, "failure_ts": self.failure_ts,
                "last_successful_stream_ordering": self.last_successful_stream_ordering}


_COLUMNS = ("destination, last_successful_stream_ordering, retry_last_ts, retry_interval, failure_ts,"
            " lease_owner, lease_expires_ts")


def _row(r: Any) -> DestinationRow:
    return DestinationRow(r["destination"], r["last_successful_stream_ordering"], int(r["retry_last_ts"]),
                          int(r["retry_interval"]), r["failure_ts"], r["lease_owner"], int(r["lease_expires_ts"]))


class FederationSendingStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- destinations --------------------------------------------------------------------------------------
    async def get_destination(self, destination: str) -> DestinationRow | None:
        r = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM federation_destinations WHERE destination = $1",
                                   destination)
        return None if r is None else _row(r)

    async def all_destinations(self) -> list[DestinationRow]:
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM federation_destinations")
        return [_row(r) for r in rows]

    async def add_destinations(self, owed_from: dict[str, int]) -> None:
        """Destinations seen for the first time, each owed every sendable event after its position."""
        if not owed_from:
            return

        async def add(conn: Any) -> None:
            await conn.executemany(
                "INSERT INTO federation_destinations (destination, last_successful_stream_ordering)"
                " VALUES ($1, $2) ON CONFLICT (destination) DO NOTHING", list(owed_from.items()))

        await self.db.run_transaction("add_destinations", add)

    async def set_sent(self, destination: str, stream_ordering: int | None) -> None:
        """A transaction went through: clear the backoff and, with PDUs, move the progress on."""
        if stream_ordering is None:
            await self.db.execute(
                "UPDATE federation_destinations SET retry_last_ts = 0, retry_interval = 0, failure_ts = NULL"
                " WHERE destination = $1 AND (retry_interval <> 0 OR failure_ts IS NOT NULL)", destination)
            return
        await self.db.execute(
            "UPDATE federation_destinations SET retry_last_ts = 0, retry_interval = 0, failure_ts = NULL,"
            " last_successful_stream_ordering = $2 WHERE destination = $1"
            " AND (last_successful_stream_ordering IS NULL OR last_successful_stream_ordering < $2"
            "      OR retry_interval <> 0 OR failure_ts IS NOT NULL)", destination, stream_ordering)

    async def set_failed(self, destination: str, retry_last_ts: int, retry_interval: int) -> None:
        await self.db.execute(
            "UPDATE federation_destinations SET retry_last_ts = $2, retry_interval = $3,"
            " failure_ts = COALESCE(failure_ts, $2) WHERE destination = $1",
            destination, retry_last_ts, retry_interval)

    async def reset_backoff(self, destination: str) -> bool:
        """Admin's reset_connection: True when the destination is known."""
        row = await self.db.fetchrow(
            "UPDATE federation_destinations SET retry_last_ts = 0, retry_interval = 0, failure_ts = NULL"
            " WHERE destination = $1 RETURNING destination", destination)
        return row is not None

    # -- leases ----------------------------------------------------------------------------------------------
    async def take_leases(self, destinations: Sequence[str], owner: str, now: int, ttl_ms: int) -> set[str]:
        """Take or renew the lease of each destination that is free, expired, or ours already; returns
        those now held by `owner`."""
        if not destinations:
            return set()

        async def take(conn: Any) -> set[str]:
            rows = await conn.fetch(
                "UPDATE federation_destinations SET lease_owner = $1, lease_expires_ts = $2"
                " WHERE (lease_owner IS NULL OR lease_owner = $1 OR lease_expires_ts < $3)"
                f" AND destination IN ({_marks(len(destinations), 4)}) RETURNING destination",
                owner, now + ttl_ms, now, *destinations)
            return {r["destination"] for r in rows}

        return await self.db.run_transaction("take_leases", take)

    async def release_leases(self, destinations: Sequence[str], owner: str) -> None:
        if destinations:
            await self.db.execute(
                "UPDATE federation_destinations SET lease_owner = NULL, lease_expires_ts = 0"
                f" WHERE lease_owner = $1 AND destination IN ({_marks(len(destinations), 2)})",
                owner, *destinations)

    # -- the durable EDU outbox --------------------------------------------------------------------------
    async def add_edus(self, rows: Sequence[tuple[str, str, Any]], now: int) -> None:
        """(destination, edu_type, content) rows, kept until a transaction carrying them succeeds."""
        if not rows:
            return

        async def add(conn: Any) -> None:
            await conn.executemany(
                "INSERT INTO federation_edu_outbox (destination, edu_type, content, created_ts) VALUES ($1,$2,$3,$4)",
                [(d, t, json_dumps(c), now) for d, t, c in rows])

        await self.db.run_transaction("add_federation_edus", add)

    async def get_edus(self, destination: str, limit: int) -> list[tuple[int, str, Any]]:
        rows = await self.db.fetch(
            "SELECT id, edu_type, content FROM federation_edu_outbox WHERE destination = $1 ORDER BY id LIMIT $2",
            destination, limit)
        return [(int(r["id"]), r["edu_type"], json_loads(r["content"])) for r in rows]

    async def delete_edus(self, ids: Sequence[int]) -> None:
        if ids:
            await self.db.execute(f"DELETE FROM federation_edu_outbox WHERE id IN ({_marks(len(ids))})", *ids)

    async def destinations_with_edus(self) -> list[str]:
        rows = await self.db.fetch("SELECT DISTINCT destination FROM federation_edu_outbox")
        return [r["destination"] for r in rows]

    # -- relays --------------------------------------------------------------------------------------------
    async def add_relay(self, event_id: str, origin: str) -> None:
        await self.db.execute(
            "INSERT INTO federation_event_relays (event_id, origin) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING",
            event_id, origin)

    async def get_relays(self, event_ids: Sequence[str]) -> dict[str, str]:
        if not event_ids:
            return {}
        rows = await self.db.fetch(
            f"SELECT event_id, origin FROM federation_event_relays WHERE event_id IN ({_marks(len(event_ids))})",
            *event_ids)
        return {r["event_id"]: r["origin"] for r in rows}

    # -- the senders' positions ------------------------------------------------------------------------------
    async def get_position(self, instance: str) -> int | None:
        v = await self.db.fetchval(
            "SELECT stream_ordering FROM federation_sender_positions WHERE instance_name = $1", instance)
        return None if v is None else int(v)

    async def set_position(self, instance: str, position: int) -> None:
        await self.db.execute(
            "INSERT INTO federation_sender_positions (instance_name, stream_ordering) VALUES ($1, $2)"
            " ON CONFLICT (instance_name) DO UPDATE SET stream_ordering = excluded.stream_ordering",
            instance, position)

    # -- what the senders read --------------------------------------------------------------------------
    async def events_between(self, low: int, high: int, limit: int) -> list[Any]:
        """Events of the stream in (low, high], in order: what a sender needs to route them."""
        return await self.db.fetch(
            "SELECT stream_ordering, event_id, room_id, type, state_key, sender, membership FROM events"
            " WHERE stream_ordering > $1 AND stream_ordering <= $2 ORDER BY stream_ordering LIMIT $3",
            low, high, limit)

    async def owed_events(self, room_ids: Sequence[str], after: int, upto: int, local_suffix: str,
                          limit: int) -> list[Any]:
        """Catch-up: events in `room_ids` after `after` (up to `upto`) sent by this server's users or
        relayed by it, in stream order."""
        if not room_ids:
            return []
        return await self.db.fetch(
            "SELECT e.stream_ordering, e.event_id, e.room_id, e.sender, r.origin AS relay_origin"
            " FROM events e LEFT JOIN federation_event_relays r ON r.event_id = e.event_id"
            " WHERE e.stream_ordering > $1 AND e.stream_ordering <= $2"
            " AND (e.sender LIKE $3 ESCAPE '\\' OR r.origin IS NOT NULL)"
            f" AND e.room_id IN ({_marks(len(room_ids), 5)})"
            " ORDER BY e.stream_ordering LIMIT $4",
            after, upto, _suffix_pattern(local_suffix), limit, *room_ids)

    async def joined_remote_members(self, local_suffix: str) -> list[tuple[str, str]]:
        """(room_id, user_id) of every joined member of another server, for the room -> servers map."""
        rows = await self.db.fetch(
            "SELECT room_id, state_key FROM current_state_events WHERE type = 'm.room.member'"
            " AND membership = 'join' AND state_key NOT LIKE $1 ESCAPE '\\'", _suffix_pattern(local_suffix))
        return [(r["room_id"], r["state_key"]) for r in rows]
