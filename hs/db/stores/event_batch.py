"""Persisting a batch of plain room events on PostgreSQL in one statement: one round trip, one commit.

A message send's transaction used to be BEGIN, an INSERT per event, one per transaction ID, the
forward-extremity UPDATE, the notifications INSERT, a receipts read, the unread-summary upsert and
COMMIT: about nine round trips, most of a send's latency on a database a network hop away. For a
batch without state events or redactions (nearly every batch) the same writes fit in one statement
of data-modifying CTEs, which PostgreSQL runs atomically in its own transaction. Batches with state
events or redactions, and SQLite (in-process, one hop per transaction anyway), use the general path
in `hs/services/events.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hs.db.pool import Database
from hs.db.stores.push import PushRow, SummaryRow, notification_rows
from hs.events.event import Event
from hs.util import json_dumps, now_ms

_PERSIST = """
WITH new_events AS (
  INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth, origin_server_ts,
                      instance_name, state_group_before, state_group_after, txn_device_id, txn_id, json)
  SELECT e.so, e.eid, $1, e.typ, e.snd, e.dep, e.ts, $2, e.sg, e.sg, e.tdev, e.tid, e.js
  FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[],
              $10::text[], $11::text[], $12::text[]) AS e(so, eid, typ, snd, dep, ts, sg, tdev, tid, js)
), new_txns AS (
  INSERT INTO event_txn_ids (user_id, device_id, room_id, txn_id, event_id, inserted_ts)
  SELECT t.usr, t.dev, $1, t.tid, t.eid, $13
  FROM unnest($14::text[], $15::text[], $16::text[], $17::text[]) AS t(usr, dev, tid, eid)
), extremity AS (
  UPDATE event_forward_extremities SET event_id = $18 WHERE room_id = $1 RETURNING 1
), new_notifications AS (
  INSERT INTO event_notifications (room_id, stream_ordering, event_id, thread_id, notify_users, highlight_users)
  SELECT $1, n.so, n.eid, n.thr, n.users, n.high
  FROM unnest($19::bigint[], $20::text[], $21::text[], $22::text[], $23::text[]) AS n(so, eid, thr, users, high)
), unread AS (
  -- Count only what the user's read receipt (main timeline, or this thread) does not already cover.
  SELECT a.usr AS user_id, a.thr AS thread_id, COUNT(*) AS notifs, SUM(a.hl) AS highlights
  FROM unnest($24::text[], $25::bigint[], $26::text[], $27::int[]) AS a(usr, so, thr, hl)
  WHERE a.so > COALESCE((SELECT MAX(r.event_stream_ordering) FROM receipts r
      WHERE r.room_id = $1 AND r.user_id = a.usr AND r.receipt_type IN ('m.read', 'm.read.private')
      AND (r.thread_id = '' OR r.thread_id = a.thr)), 0)
  GROUP BY a.usr, a.thr
), summary AS (
  INSERT INTO event_push_summary (user_id, room_id, thread_id, notif_count, highlight_count)
  SELECT u.user_id, $1, u.thread_id, u.notifs, u.highlights FROM unread u ORDER BY u.user_id, u.thread_id
  ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET
    notif_count = event_push_summary.notif_count + excluded.notif_count,
    highlight_count = event_push_summary.highlight_count + excluded.highlight_count
  RETURNING user_id, thread_id, notif_count, highlight_count
)"""
_POSITION = """, own_position AS (
  INSERT INTO stream_positions (stream_name, instance_name, position) VALUES ('events', $2, $28)
  ON CONFLICT (stream_name, instance_name) DO UPDATE SET position = excluded.position
  WHERE stream_positions.position < excluded.position
)"""
# One row at least (for the extremity count), plus the new value of every unread summary row touched.
_RESULT = """
SELECT x.extremities, s.user_id, s.thread_id, s.notif_count, s.highlight_count
FROM (SELECT COUNT(*) AS extremities FROM extremity) x LEFT JOIN summary s ON TRUE"""
PERSIST_SQL = _PERSIST + _RESULT
PERSIST_WITH_POSITION_SQL = _PERSIST + _POSITION + _RESULT


def fits_one_statement(events: Sequence[Event]) -> bool:
    """Plain events only: no state (current state, memberships, state groups) and no redactions."""
    return all(ev.state_key is None and ev.type != "m.room.redaction" for ev in events)


async def persist_plain_events(db: Database, room_id: str, instance: str,
                               events: Sequence[tuple[Event, int, tuple[str, str, str] | None]],
                               push_rows: Sequence[PushRow], own_position: int | None) -> list[SummaryRow]:
    """Store (event, stream position, transaction) rows, their push actions and unread counts, the
    room's new forward extremity and (with several writers) this writer's position, atomically.
    Returns the new values of the unread summary rows it incremented."""
    assert db.engine == "postgres" and fits_one_statement([ev for ev, _, _ in events])
    with_txn = [(ev, txn) for ev, _, txn in events if txn is not None]
    notifications = notification_rows(push_rows)
    args: list[Any] = [
        room_id, instance,
        [pos for _, pos, _ in events], [ev.event_id for ev, _, _ in events], [ev.type for ev, _, _ in events],
        [ev.sender for ev, _, _ in events], [ev.depth for ev, _, _ in events],
        [ev.origin_server_ts for ev, _, _ in events],
        [ev.internal["state_group_after"] for ev, _, _ in events],
        [txn[1] if txn else None for _, _, txn in events], [txn[2] if txn else None for _, _, txn in events],
        [json_dumps(ev.pdu) for ev, _, _ in events],
        now_ms(),
        [txn[0] for _, txn in with_txn], [txn[1] for _, txn in with_txn], [txn[2] for _, txn in with_txn],
        [ev.event_id for ev, _ in with_txn],
        events[-1][0].event_id,
        [n[1] for n in notifications], [n[2] for n in notifications], [n[3] for n in notifications],
        [n[4] for n in notifications], [n[5] for n in notifications],
        [r[0] for r in push_rows], [r[2] for r in push_rows], [r[3] for r in push_rows],
        [1 if r[5] else 0 for r in push_rows],
    ]
    sql = PERSIST_SQL
    if own_position is not None:
        sql = PERSIST_WITH_POSITION_SQL
        args.append(own_position)
    rows = await db.run_statement("persist_events", sql, *args)
    if rows[0]["extremities"] != 1:
        # Not a linear local room (no extremity row, or several): make the last event the only one.
        async def reset_extremity(c: Any) -> None:
            await c.execute("DELETE FROM event_forward_extremities WHERE room_id = $1", room_id)
            await c.execute("INSERT INTO event_forward_extremities (room_id, event_id) VALUES ($1, $2)",
                            room_id, events[-1][0].event_id)

        await db.run_transaction("reset_extremity", reset_extremity)
    for ev, pos, txn in events:
        if txn is not None:
            ev.internal["txn"] = (txn[1], txn[2])
        ev.internal.update(stream_ordering=pos, instance_name=instance)
    return [(room_id, r["user_id"], r["thread_id"], int(r["notif_count"]), int(r["highlight_count"]))
            for r in rows if r["user_id"] is not None]
