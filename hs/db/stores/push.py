"""Push rules (users' own rules and their changes to server-default rules) and push actions.

Every push rule write also records the user's new push_rules stream position, in the same
transaction. Push actions are one row per (user, event) that notified the user; unread counts are
the rows after the user's read receipts (the later of m.read and m.read.private; an unthreaded
receipt covers every thread, a threaded one its thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hs.db.pool import Connection, Database
from hs.util import json_dumps, json_loads

JsonDict = dict[str, Any]


class PushStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- rules ---------------------------------------------------------------------------------------
    async def get_user_rules(self, user_id: str) -> list[JsonDict]:
        """The user's own rules: kind, rule_id, conditions, pattern, actions, enabled; by priority."""
        rows = await self.db.fetch(
            "SELECT kind, rule_id, priority, conditions, pattern, actions, enabled FROM push_rules"
            " WHERE user_id = $1 ORDER BY kind, priority DESC", user_id)
        return [{
            "kind": r["kind"], "rule_id": r["rule_id"],
            "conditions": None if r["conditions"] is None else json_loads(r["conditions"]),
            "pattern": r["pattern"], "actions": json_loads(r["actions"]), "enabled": bool(r["enabled"]),
        } for r in rows]

    async def get_default_changes(self, user_id: str) -> dict[tuple[str, str], JsonDict]:
        """(kind, rule_id) -> {"enabled": bool | None, "actions": list | None} for default rules."""
        rows = await self.db.fetch(
            "SELECT kind, rule_id, enabled, actions FROM push_rules_defaults WHERE user_id = $1", user_id)
        return {(r["kind"], r["rule_id"]): {
            "enabled": None if r["enabled"] is None else bool(r["enabled"]),
            "actions": None if r["actions"] is None else json_loads(r["actions"]),
        } for r in rows}

    @staticmethod
    async def _bump(c: Connection, user_id: str, stream_id: int) -> None:
        await c.execute(
            "INSERT INTO push_rules_stream (user_id, stream_id) VALUES ($1, $2)"
            " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id", user_id, stream_id)

    async def replace_kind(self, user_id: str, kind: str, rules: Sequence[JsonDict], stream_id: int) -> None:
        """Rewrite the user's rules of one kind, most important first."""

        async def txn(c: Connection) -> None:
            await c.execute("DELETE FROM push_rules WHERE user_id = $1 AND kind = $2", user_id, kind)
            n = len(rules)
            await c.executemany(
                "INSERT INTO push_rules (user_id, kind, rule_id, priority, conditions, pattern, actions, enabled)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                [(user_id, kind, r["rule_id"], n - i,
                  None if r.get("conditions") is None else json_dumps(r["conditions"]),
                  r.get("pattern"), json_dumps(r["actions"]), 1 if r.get("enabled", True) else 0)
                 for i, r in enumerate(rules)])
            await self._bump(c, user_id, stream_id)

        await self.db.run_transaction("replace_push_rules", txn)

    async def delete_rule(self, user_id: str, kind: str, rule_id: str, stream_id: int) -> bool:
        async def txn(c: Connection) -> bool:
            found = await c.fetchval(
                "SELECT 1 FROM push_rules WHERE user_id = $1 AND kind = $2 AND rule_id = $3",
                user_id, kind, rule_id)
            if not found:
                return False
            await c.execute("DELETE FROM push_rules WHERE user_id = $1 AND kind = $2 AND rule_id = $3",
                            user_id, kind, rule_id)
            await self._bump(c, user_id, stream_id)
            return True

        return await self.db.run_transaction("delete_push_rule", txn)

    async def set_user_rule_attr(self, user_id: str, kind: str, rule_id: str, enabled: bool | None,
                                 actions: list[Any] | None, stream_id: int) -> bool:
        async def txn(c: Connection) -> bool:
            found = await c.fetchval(
                "SELECT 1 FROM push_rules WHERE user_id = $1 AND kind = $2 AND rule_id = $3",
                user_id, kind, rule_id)
            if not found:
                return False
            if enabled is not None:
                await c.execute("UPDATE push_rules SET enabled = $4 WHERE user_id = $1 AND kind = $2"
                                " AND rule_id = $3", user_id, kind, rule_id, 1 if enabled else 0)
            if actions is not None:
                await c.execute("UPDATE push_rules SET actions = $4 WHERE user_id = $1 AND kind = $2"
                                " AND rule_id = $3", user_id, kind, rule_id, json_dumps(actions))
            await self._bump(c, user_id, stream_id)
            return True

        return await self.db.run_transaction("set_push_rule_attr", txn)

    async def set_default_rule_attr(self, user_id: str, kind: str, rule_id: str, enabled: bool | None,
                                    actions: list[Any] | None, stream_id: int) -> None:
        async def txn(c: Connection) -> None:
            await c.execute(
                "INSERT INTO push_rules_defaults (user_id, kind, rule_id, enabled, actions)"
                " VALUES ($1, $2, $3, NULL, NULL) ON CONFLICT (user_id, kind, rule_id) DO NOTHING",
                user_id, kind, rule_id)
            if enabled is not None:
                await c.execute("UPDATE push_rules_defaults SET enabled = $4 WHERE user_id = $1 AND kind = $2"
                                " AND rule_id = $3", user_id, kind, rule_id, 1 if enabled else 0)
            if actions is not None:
                await c.execute("UPDATE push_rules_defaults SET actions = $4 WHERE user_id = $1 AND kind = $2"
                                " AND rule_id = $3", user_id, kind, rule_id, json_dumps(actions))
            await self._bump(c, user_id, stream_id)

        await self.db.run_transaction("set_default_push_rule_attr", txn)

    async def get_user_stream_id(self, user_id: str) -> int:
        return int(await self.db.fetchval(
            "SELECT stream_id FROM push_rules_stream WHERE user_id = $1", user_id) or 0)

    async def max_stream_id(self) -> int:
        return int(await self.db.fetchval("SELECT COALESCE(MAX(stream_id), 0) FROM push_rules_stream") or 0)

    # -- push actions --------------------------------------------------------------------------------
    async def add_push_actions(self, rows: Sequence[tuple[str, str, int, str, str, bool]],
                               redacted: Sequence[str] = ()) -> None:
        """Rows (user_id, room_id, stream_ordering, thread_id, event_id, highlight); drop redacted events'."""
        if not rows and not redacted:
            return

        async def txn(c: Connection) -> None:
            await c.executemany(
                "INSERT INTO event_push_actions (user_id, room_id, stream_ordering, thread_id, event_id, highlight)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id, room_id, stream_ordering) DO NOTHING",
                [(u, r, so, t, e, 1 if h else 0) for u, r, so, t, e, h in rows])
            for event_id in redacted:
                await c.execute("DELETE FROM event_push_actions WHERE event_id = $1", event_id)

        await self.db.run_transaction("add_push_actions", txn)

    async def get_unread_counts(self, user_id: str, room_ids: list[str], upto: int,
                                ) -> dict[str, dict[str, tuple[int, int]]]:
        """room -> thread -> (notification_count, highlight_count), for events at or before `upto`."""
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for i in range(0, len(room_ids), 500):
            chunk = room_ids[i:i + 500]
            placeholders = ",".join(f"${n + 3}" for n in range(len(chunk)))
            # The user's read receipts are aggregated once (not looked up per notification row): an
            # action counts if it is after both the unthreaded receipt and its own thread's receipt.
            rows = await self.db.fetch(
                "WITH r AS (SELECT room_id, thread_id, MAX(event_stream_ordering) AS pos FROM receipts"
                "  WHERE user_id = $1 AND receipt_type IN ('m.read', 'm.read.private')"
                f"  AND room_id IN ({placeholders}) GROUP BY room_id, thread_id)"
                " SELECT a.room_id, a.thread_id, COUNT(*) AS n, SUM(a.highlight) AS h"
                " FROM event_push_actions a"
                " LEFT JOIN r r0 ON r0.room_id = a.room_id AND r0.thread_id = ''"
                " LEFT JOIN r r1 ON r1.room_id = a.room_id AND r1.thread_id = a.thread_id"
                " WHERE a.user_id = $1 AND a.stream_ordering <= $2"
                f" AND a.room_id IN ({placeholders})"
                " AND a.stream_ordering > COALESCE(r0.pos, 0) AND a.stream_ordering > COALESCE(r1.pos, 0)"
                " GROUP BY a.room_id, a.thread_id", user_id, upto, *chunk)
            for r in rows:
                out.setdefault(r["room_id"], {})[r["thread_id"]] = (int(r["n"]), int(r["h"] or 0))
        return out
