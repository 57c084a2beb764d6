"""What Synapse's room admin API reads and deletes: rooms with their counts and summary state, blocked
rooms, each user's server notices room, and purges (a whole room, or a room's history before a point).

hs has no room statistics tables (Synapse's room_stats_*): the list is computed from `rooms` and the
current state in three grouped queries, which is fine for an admin listing on a server of some
thousands of rooms.
"""

from __future__ import annotations

from typing import Any

from hs.db.pool import Connection, Database
from hs.db.stores.where import Where
from hs.util import json_loads

# (state event type, the content key the list shows) for the summary columns.
SUMMARY_STATE = {
    "m.room.name": "name",
    "m.room.canonical_alias": "alias",
    "m.room.encryption": "algorithm",
    "m.room.create": "m.federate",
    "m.room.join_rules": "join_rule",
    "m.room.guest_access": "guest_access",
    "m.room.history_visibility": "history_visibility",
    "m.room.avatar": "url",
    "m.room.topic": "topic",
}
# Tables whose rows belong to one room (deleted with it), besides events and state groups.
ROOM_TABLES = ("room_aliases", "event_txn_ids", "current_state_events", "room_memberships", "room_forgotten",
               "account_data", "e2e_room_keys", "receipts", "event_push_summary", "event_notifications",
               "event_forward_extremities", "event_relations", "event_outliers", "event_pending_redactions",
               "sliding_sync_rooms", "appservice_room_list", "server_notices_rooms")
# Rows keyed by one event: deleted with the events a history purge removes.
EVENT_TABLES = ("event_relations", "event_notifications", "event_txn_ids", "federation_event_relays")
BATCH = 500


class AdminRoomStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reading ---------------------------------------------------------------------------------------------
    async def rooms(self, server_name: str, room_id: str | None = None) -> list[dict[str, Any]]:
        """Every room (or the one) with its member counts, state event count and summary state content
        (`state`: event type -> content)."""
        where = Where()
        if room_id is not None:
            where.add("room_id = {}", room_id)
        rooms = {r["room_id"]: {**r, "joined": 0, "local": 0, "state_events": 0, "state": {}}
                 for r in await self.db.fetch(
                     f"SELECT room_id, room_version, creator, is_public FROM rooms WHERE {where}", *where.args)}
        suffix = ":" + server_name
        members = Where()
        local = members.arg(suffix)
        if room_id is not None:
            members.add("room_id = {}", room_id)
        members.add("type = {}", "m.room.member")
        members.add("membership = {}", "join")
        for r in await self.db.fetch(
                f"SELECT room_id, COUNT(*) AS joined, SUM(CASE WHEN SUBSTR(state_key, LENGTH(state_key) - "
                f"{len(suffix) - 1}) = {local} THEN 1 ELSE 0 END) AS local FROM current_state_events"
                f" WHERE {members} GROUP BY room_id", *members.args):
            if r["room_id"] in rooms:
                rooms[r["room_id"]].update(joined=int(r["joined"]), local=int(r["local"] or 0))
        for r in await self.db.fetch(
                f"SELECT room_id, COUNT(*) AS n FROM current_state_events WHERE {where} GROUP BY room_id",
                *where.args):
            if r["room_id"] in rooms:
                rooms[r["room_id"]]["state_events"] = int(r["n"])
        state = Where()
        if room_id is not None:
            state.add("c.room_id = {}", room_id)
        state.add("c.state_key = {}", "")
        state.add(f"c.type IN ({state.marks(SUMMARY_STATE)})")
        for r in await self.db.fetch(
                "SELECT c.room_id, c.type, e.json FROM current_state_events c"
                f" JOIN events e ON e.event_id = c.event_id WHERE {state}", *state.args):
            if r["room_id"] in rooms:
                content = json_loads(r["json"]).get("content")
                rooms[r["room_id"]]["state"][r["type"]] = content if isinstance(content, dict) else {}
        return list(rooms.values())

    async def local_devices(self, user_ids: list[str]) -> int:
        if not user_ids:
            return 0
        where = Where()
        where.add(f"user_id IN ({where.marks(user_ids)})")
        return int(await self.db.fetchval(f"SELECT COUNT(*) FROM devices WHERE {where}", *where.args) or 0)

    async def forgotten_by(self, room_id: str) -> set[str]:
        rows = await self.db.fetch("SELECT user_id FROM room_forgotten WHERE room_id = $1", room_id)
        return {r["user_id"] for r in rows}

    # -- blocking --------------------------------------------------------------------------------------------
    async def blocked_by(self, room_id: str) -> str | None:
        """Who blocked the room (None: not blocked)."""
        value = await self.db.fetchval("SELECT user_id FROM blocked_rooms WHERE room_id = $1", room_id)
        return None if value is None else str(value)

    async def block(self, room_id: str, user_id: str) -> None:
        await self.db.execute("INSERT INTO blocked_rooms (room_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                              room_id, user_id)

    async def unblock(self, room_id: str) -> None:
        await self.db.execute("DELETE FROM blocked_rooms WHERE room_id = $1", room_id)

    # -- server notices rooms --------------------------------------------------------------------------------
    async def notices_room(self, user_id: str) -> str | None:
        value = await self.db.fetchval("SELECT room_id FROM server_notices_rooms WHERE user_id = $1", user_id)
        return None if value is None else str(value)

    async def set_notices_room(self, user_id: str, room_id: str) -> None:
        async def txn(c: Connection) -> None:
            await c.execute("DELETE FROM server_notices_rooms WHERE user_id = $1", user_id)
            await c.execute("INSERT INTO server_notices_rooms (user_id, room_id) VALUES ($1, $2)", user_id, room_id)

        await self.db.run_transaction("set_notices_room", txn)

    async def set_avatar(self, user_id: str, avatar_url: str) -> None:
        await self.db.execute("UPDATE profiles SET avatar_url = $1 WHERE user_id = $2", avatar_url, user_id)

    # -- purging ---------------------------------------------------------------------------------------------
    async def purge_room(self, room_id: str) -> list[str]:
        """Delete everything stored about the room, in one transaction (its block, if any, stays); the
        IDs of the events that went."""
        async def txn(c: Connection) -> list[str]:
            ids = [r["event_id"] for r in await c.fetch("SELECT event_id FROM events WHERE room_id = $1", room_id)]
            await c.execute("DELETE FROM federation_event_relays WHERE event_id IN"
                            " (SELECT event_id FROM events WHERE room_id = $1)", room_id)
            await c.execute("DELETE FROM state_groups_state WHERE state_group IN"
                            " (SELECT id FROM state_groups WHERE room_id = $1)", room_id)
            for table in ("state_groups", "events", *ROOM_TABLES, "rooms"):
                await c.execute(f"DELETE FROM {table} WHERE room_id = $1", room_id)
            return ids

        return await self.db.run_transaction("purge_room", txn)

    async def event_position(self, room_id: str, event_id: str) -> tuple[int, int] | None:
        """(depth, stream ordering) of one of the room's events."""
        row = await self.db.fetchrow(
            "SELECT depth, stream_ordering FROM events WHERE event_id = $1 AND room_id = $2", event_id, room_id)
        return None if row is None else (int(row["depth"]), int(row["stream_ordering"]))

    async def last_event_before(self, room_id: str, ts: int) -> tuple[int, int] | None:
        """(depth, stream ordering) of the room's last event sent before `ts`."""
        row = await self.db.fetchrow(
            "SELECT depth, stream_ordering FROM events WHERE room_id = $1 AND origin_server_ts < $2"
            " ORDER BY stream_ordering DESC LIMIT 1", room_id, ts)
        return None if row is None else (int(row["depth"]), int(row["stream_ordering"]))

    async def purge_history(self, room_id: str, depth: int, local_suffix: str | None) -> list[str]:
        """Delete the room's non-state events of lower depth (topologically before), except its forward
        extremities and latest event; with `local_suffix` (":server"), this server's users' events are
        kept. State events are kept (current and past state is built from them). Returns the IDs of those that went."""
        where = Where()
        where.add("room_id = {}", room_id)
        where.add("state_key IS NULL")
        where.add("depth < {}", depth)
        where.add("event_id NOT IN (SELECT event_id FROM event_forward_extremities WHERE room_id = {})", room_id)
        where.add("stream_ordering < (SELECT MAX(stream_ordering) FROM events WHERE room_id = {})", room_id)
        if local_suffix is not None:
            where.add(f"SUBSTR(sender, LENGTH(sender) - {len(local_suffix) - 1}) <> {{}}", local_suffix)
        ids = [r["event_id"] for r in await self.db.fetch(f"SELECT event_id FROM events WHERE {where}", *where.args)]
        for start in range(0, len(ids), BATCH):
            batch = ids[start:start + BATCH]

            async def txn(c: Connection, batch: list[str] = batch) -> None:
                w = Where()
                marks = w.marks(batch)
                for table in EVENT_TABLES:
                    await c.execute(f"DELETE FROM {table} WHERE event_id IN ({marks})", *w.args)
                await c.execute(f"DELETE FROM events WHERE event_id IN ({marks})", *w.args)

            await self.db.run_transaction("purge_history", txn)
        return ids
