"""An event's server-local metadata: empty until the store writes or reads the event, filled in from
the events row when it does, and a stream position only for a persisted event."""

from __future__ import annotations

import pytest

from hs.db.stores.events import EventStore
from hs.events.event import Event, EventMetadata
from hs.events.room_versions import KNOWN_ROOM_VERSIONS

V11 = KNOWN_ROOM_VERSIONS["11"]
PDU = {"type": "m.room.message", "room_id": "!r:x", "sender": "@a:x", "content": {}, "depth": 3,
       "prev_events": [], "auth_events": [], "origin_server_ts": 0}


def test_a_new_event_has_no_metadata_and_no_position() -> None:
    ev = Event(dict(PDU), V11, event_id="$new")
    assert ev.internal == EventMetadata()
    assert ev.internal.stream_ordering is None and ev.internal.redacted_by is None
    assert ev.internal.rejected is False
    with pytest.raises(ValueError):
        ev.internal.position()


def test_metadata_is_typed_fields_only() -> None:
    ev = Event(dict(PDU), V11, event_id="$new")
    with pytest.raises(AttributeError):
        ev.internal.stream_orderng = 5  # type: ignore[attr-defined]  # a misspelt key is an error now


def test_a_row_read_from_the_store_fills_every_field() -> None:
    store = EventStore(None, rooms=None)  # type: ignore[arg-type]
    row = {"event_id": "$e", "json": '{"type": "m.room.message", "room_id": "!r:x", "sender": "@a:x",'
           ' "content": {}, "depth": 3, "prev_events": [], "auth_events": [], "origin_server_ts": 0}',
           "stream_ordering": 42, "instance_name": "writer1", "state_group_before": 7,
           "state_group_after": 8, "txn_device_id": "DEV", "txn_id": "t1", "redacted_by": "$red"}
    ev = store._row_to_event(row, "11")
    assert ev.internal == EventMetadata(stream_ordering=42, instance_name="writer1", state_group_before=7,
                                        state_group_after=8, txn=("DEV", "t1"), redacted_by="$red")
    assert ev.internal.position() == 42


def test_a_row_without_a_transaction_or_redaction_leaves_them_empty() -> None:
    store = EventStore(None, rooms=None)  # type: ignore[arg-type]
    row = {"event_id": "$e", "json": '{"type": "m.room.message", "room_id": "!r:x", "sender": "@a:x",'
           ' "content": {}, "depth": 3, "prev_events": [], "auth_events": [], "origin_server_ts": 0}',
           "stream_ordering": 5, "instance_name": "master", "state_group_before": 1,
           "state_group_after": 1, "txn_device_id": None, "txn_id": None, "redacted_by": None}
    ev = store._row_to_event(row, "11")
    assert (ev.internal.txn, ev.internal.redacted_by) == (None, None)
