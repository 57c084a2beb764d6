"""Persisting a batch of plain room events on PostgreSQL in one statement: one round trip, one commit.

A message send's transaction used to be BEGIN, an INSERT per event, one per transaction ID, the
forward-extremity UPDATE, the notifications INSERT, a receipts read, the unread-summary upsert and
COMMIT: about nine round trips, most of a send's latency on a database a network hop away. For a
batch without state events or redactions (nearly every batch) the same writes fit in one statement
of data-modifying CTEs, which PostgreSQL runs atomically in its own transaction. Batches with state
events or redactions, and SQLite (in-process, one hop per transaction anyway), use the general path
in `hs/services/events.py`.

When every reader is in the writer's own process (a monolith), only the events themselves must be
stored before readers are woken: the writer keeps the unread counts its /sync reads in memory, and
answers transaction-ID retries and builds the room's next event from memory. The events then commit
alone (`EVENTS_ONLY_SQL`) while push rules are evaluated, and the rest of the batch (notifications,
unread counts, transaction IDs, the forward extremity) follows in a second statement (`REST_SQL`)
after the readers were woken. The second statement also moves the writer's NOTIFIED_UPTO mark; at
start-up the writer completes whatever it persisted above the mark (`complete_batches`: a stop
between the two statements).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hs.db.pool import Database
from hs.db.stores.push import (
    NOTIFIED_UPTO,
    UNREAD_COUNTS_LOCK_SQL,
    PushRow,
    SummaryRow,
    notification_rows,
    recompute_push_summary,
)
from hs.events.event import Event
from hs.util import json_dumps, now_ms

PlainRow = tuple[Event, int, tuple[str, str, str] | None]  # event, stream position, (user, device, txn ID)

# Parameters are written ${0}, ${1}, ... relative to where a piece's parameters start (`_numbered`);
# $1 is always the room ID.
_EVENTS = """
new_events AS (
  INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth, origin_server_ts,
                      instance_name, state_group_before, state_group_after, txn_device_id, txn_id, json)
  SELECT e.so, e.eid, $1, e.typ, e.snd, e.dep, e.ts, ${0}, e.sg, e.sg, e.tdev, e.tid, e.js
  FROM unnest(${1}::bigint[], ${2}::text[], ${3}::text[], ${4}::text[], ${5}::bigint[], ${6}::bigint[],
              ${7}::bigint[], ${8}::text[], ${9}::text[], ${10}::text[])
    AS e(so, eid, typ, snd, dep, ts, sg, tdev, tid, js)
)"""
_TXNS_AND_EXTREMITY = """
new_txns AS (
  INSERT INTO event_txn_ids (user_id, device_id, room_id, txn_id, event_id, inserted_ts)
  SELECT t.usr, t.dev, $1, t.tid, t.eid, ${0}
  FROM unnest(${1}::text[], ${2}::text[], ${3}::text[], ${4}::text[]) AS t(usr, dev, tid, eid)
), extremity AS (
  UPDATE event_forward_extremities SET event_id = ${5} WHERE room_id = $1 RETURNING 1
)"""
_COUNTS = """
new_notifications AS (
  INSERT INTO event_notifications (room_id, stream_ordering, event_id, thread_id, notify_users, highlight_users)
  SELECT $1, n.so, n.eid, n.thr, n.users, n.high
  FROM unnest(${0}::bigint[], ${1}::text[], ${2}::text[], ${3}::text[], ${4}::text[])
    AS n(so, eid, thr, users, high)
), count_lock AS (
  -- The room's unread-summary lock (`lock_unread_counts`), taken before the first summary row is
  -- written: `unread` reads it, and `summary` reads all of `unread` first.
  {COUNT_LOCK}
), unread AS (
  -- Count only what the user's read receipt (main timeline, or this thread) does not already cover.
  SELECT a.usr AS user_id, a.thr AS thread_id, COUNT(*) AS notifs, SUM(a.hl) AS highlights
  FROM unnest(${5}::text[], ${6}::bigint[], ${7}::text[], ${8}::int[]) AS a(usr, so, thr, hl)
    CROSS JOIN count_lock
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
)""".replace("{COUNT_LOCK}", UNREAD_COUNTS_LOCK_SQL)
# A stream position row (instance $I, position $P), never moved backwards.
_POSITION = """
{NAME} AS (
  INSERT INTO stream_positions (stream_name, instance_name, position) VALUES ('{STREAM}', $I, $P)
  ON CONFLICT (stream_name, instance_name) DO UPDATE SET position = excluded.position
  WHERE stream_positions.position < excluded.position
)"""
# One row at least (for the extremity count), plus the new value of every unread summary row touched.
_RESULT = """
SELECT x.extremities, s.user_id, s.thread_id, s.notif_count, s.highlight_count
FROM (SELECT COUNT(*) AS extremities FROM extremity) x LEFT JOIN summary s ON TRUE"""


def _numbered(sql: str, first: int) -> str:
    """A piece's relative parameters ${0}, ${1}, ... as $first, $first+1, ..."""
    for k in range(20, -1, -1):
        sql = sql.replace(f"${{{k}}}", f"${first + k}")
    return sql


def _position(name: str, stream: str, instance_param: int, position_param: int) -> str:
    return (_POSITION.replace("{NAME}", name).replace("{STREAM}", stream)
            .replace("$I", f"${instance_param}").replace("$P", f"${position_param}"))


# Everything in one statement: $1 room, $2-$12 events, $13-$18 transaction IDs and extremity,
# $19-$27 notifications; with several writers this writer's position too ($2 instance, $28).
_ALL = "WITH" + _numbered(_EVENTS, 2) + "," + _numbered(_TXNS_AND_EXTREMITY, 13) + "," + _numbered(_COUNTS, 19)
PERSIST_SQL = _ALL + _RESULT
PERSIST_WITH_POSITION_SQL = _ALL + "," + _position("own_position", "events", 2, 28) + _RESULT
# The events alone ($1 room, $2-$12 events); the rest of the batch follows in REST_SQL.
EVENTS_ONLY_SQL = "WITH" + _numbered(_EVENTS, 2) + "\nSELECT 1"
# One event alone, as a plain INSERT with the same parameters as one-element arrays would have (the
# commonest batch on a quiet server, where the statement is on the path to waking /sync: PostgreSQL
# spends ~40 µs less on it than on unnesting arrays in a CTE).
ONE_EVENT_SQL = """
INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth, origin_server_ts,
                    instance_name, state_group_before, state_group_after, txn_device_id, txn_id, json)
VALUES ($3, $4, $1, $5, $6, $7, $8, $2, $9, $9, $10, $11, $12)"""
# The rest of a batch whose events committed alone: $1 room, $2-$7 transaction IDs and extremity,
# $8-$16 notifications, $17-$18 the writer's NOTIFIED_UPTO mark (instance, position).
REST_SQL = ("WITH" + _numbered(_TXNS_AND_EXTREMITY, 2) + "," + _numbered(_COUNTS, 8) + ","
            + _position("mark", NOTIFIED_UPTO, 17, 18) + _RESULT)


def fits_one_statement(events: Sequence[Event]) -> bool:
    """Plain events only: no state (current state, memberships, state groups), no redactions and no
    relations (thread replies, edits, reactions: `event_relations` rows)."""
    return all(ev.state_key is None and ev.type != "m.room.redaction" and ev.relation is None for ev in events)


async def persist_plain_events(db: Database, room_id: str, instance: str, events: Sequence[PlainRow],
                               push_rows: Sequence[PushRow] | None, own_position: int | None) -> list[SummaryRow]:
    """Store (event, stream position, transaction) rows, their push actions and unread counts, the
    room's new forward extremity and (with several writers) this writer's position, atomically.
    Returns the new values of the unread summary rows it incremented.

    With `push_rows` None the events are stored alone: `persist_rest` must follow."""
    assert db.engine == "postgres" and fits_one_statement([ev for ev, _, _ in events])
    args: list[Any] = [
        room_id, instance,
        [pos for _, pos, _ in events], [ev.event_id for ev, _, _ in events], [ev.type for ev, _, _ in events],
        [ev.sender for ev, _, _ in events], [ev.depth for ev, _, _ in events],
        [ev.origin_server_ts for ev, _, _ in events],
        [ev.internal.state_group_after for ev, _, _ in events],
        [txn[1] if txn else None for _, _, txn in events], [txn[2] if txn else None for _, _, txn in events],
        [json_dumps(ev.pdu) for ev, _, _ in events],
    ]
    rows: list[Any] = []
    if push_rows is None:
        assert own_position is None, "only a single writer stores its events alone"
        if len(events) == 1:
            one = [a[0] if isinstance(a, list) else a for a in args]
            await db.run_statement("persist_events", ONE_EVENT_SQL, *one)
        else:
            await db.run_statement("persist_events", EVENTS_ONLY_SQL, *args)
    else:
        args += _txn_args(events) + _counts_args(push_rows)
        sql = PERSIST_SQL
        if own_position is not None:
            sql = PERSIST_WITH_POSITION_SQL
            args.append(own_position)
        rows = await db.run_statement("persist_events", sql, *args)
        await _check_extremity(db, room_id, events, rows)
    for ev, pos, txn in events:
        if txn is not None:
            ev.internal.txn = (txn[1], txn[2])
        ev.internal.stream_ordering, ev.internal.instance_name = pos, instance
    return _summary_rows(room_id, rows)


async def persist_rest(db: Database, room_id: str, instance: str, events: Sequence[PlainRow],
                       push_rows: Sequence[PushRow], notified_upto: int) -> list[SummaryRow]:
    """What `persist_plain_events` left out when it stored events alone (transaction IDs, forward
    extremity, notifications and unread counts), and the writer's NOTIFIED_UPTO mark; returns the
    incremented summary rows' new values."""
    rows = await db.run_statement("persist_rest", REST_SQL, room_id, *_txn_args(events),
                                  *_counts_args(push_rows), instance, notified_upto)
    await _check_extremity(db, room_id, events, rows)
    return _summary_rows(room_id, rows)


async def _check_extremity(db: Database, room_id: str, events: Sequence[PlainRow], rows: list[Any]) -> None:
    if rows[0]["extremities"] == 1:
        return
    # Not a linear local room (no extremity row, or several): make the last event the only one.
    async def reset_extremity(c: Any) -> None:
        await c.execute("DELETE FROM event_forward_extremities WHERE room_id = $1", room_id)
        await c.execute("INSERT INTO event_forward_extremities (room_id, event_id) VALUES ($1, $2)",
                        room_id, events[-1][0].event_id)

    await db.run_transaction("reset_extremity", reset_extremity)


async def complete_batches(db: Database, instance: str, events: Sequence[Event], push_rows: Sequence[PushRow],
                          upto: int, after: int | None = None) -> None:
    """Complete batches whose events were stored alone and whose `persist_rest` never ran: `events`
    (this writer's, positions in (after, upto]) with their push rows evaluated again. Idempotent:
    notifications already there stay, unread counts are recounted, transaction IDs come from the
    events' own columns, each room's extremity becomes its newest event (local rooms are linear).
    Then the writer's NOTIFIED_UPTO mark is `upto`."""
    rooms = sorted({ev.room_id for ev in events})

    async def txn(c: Any) -> None:
        await c.executemany(
            "INSERT INTO event_notifications (room_id, stream_ordering, event_id, thread_id, notify_users,"
            " highlight_users) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (room_id, stream_ordering) DO NOTHING",
            notification_rows(push_rows))
        for user_id, room_id in sorted({(r[0], r[1]) for r in push_rows}):
            await recompute_push_summary(c, user_id, room_id)
        if after is not None:
            await c.execute(
                "INSERT INTO event_txn_ids (user_id, device_id, room_id, txn_id, event_id, inserted_ts)"
                " SELECT sender, txn_device_id, room_id, txn_id, event_id, $4 FROM events"
                " WHERE instance_name = $1 AND stream_ordering > $2 AND stream_ordering <= $3"
                " AND txn_id IS NOT NULL AND txn_device_id IS NOT NULL ON CONFLICT DO NOTHING",
                instance, after, upto, now_ms())
        for room_id in rooms:
            newest = await c.fetchval(
                "SELECT event_id FROM events WHERE room_id = $1 ORDER BY stream_ordering DESC LIMIT 1", room_id)
            await c.execute("DELETE FROM event_forward_extremities WHERE room_id = $1", room_id)
            await c.execute("INSERT INTO event_forward_extremities (room_id, event_id) VALUES ($1, $2)",
                            room_id, newest)
        await c.execute(
            "INSERT INTO stream_positions (stream_name, instance_name, position) VALUES ($1, $2, $3)"
            " ON CONFLICT (stream_name, instance_name) DO UPDATE SET position = excluded.position",
            NOTIFIED_UPTO, instance, upto)

    await db.run_transaction("complete_batches", txn)


def _txn_args(events: Sequence[PlainRow]) -> list[Any]:
    with_txn = [(ev, txn) for ev, _, txn in events if txn is not None]
    return [
        now_ms(),
        [txn[0] for _, txn in with_txn], [txn[1] for _, txn in with_txn], [txn[2] for _, txn in with_txn],
        [ev.event_id for ev, _ in with_txn],
        events[-1][0].event_id,
    ]


def _counts_args(push_rows: Sequence[PushRow]) -> list[Any]:
    notifications = notification_rows(push_rows)
    return [
        [n[1] for n in notifications], [n[2] for n in notifications], [n[3] for n in notifications],
        [n[4] for n in notifications], [n[5] for n in notifications],
        [r[0] for r in push_rows], [r[2] for r in push_rows], [r[3] for r in push_rows],
        [1 if r[5] else 0 for r in push_rows],
    ]


def _summary_rows(room_id: str, rows: list[Any]) -> list[SummaryRow]:
    return [(room_id, r["user_id"], r["thread_id"], int(r["notif_count"]), int(r["highlight_count"]))
            for r in rows if r.get("user_id") is not None]
