"""Events in the client format: the PDU's client-visible fields plus `unsigned` (age, prev_content,
transaction_id for the sending device, redacted_because); redacted events are pruned per room version."""

from __future__ import annotations

from typing import Any

from hs.events.event import Event
from hs.events.redaction import redact_pdu
from hs.util import now_ms

CLIENT_KEYS = ("content", "event_id", "origin_server_ts", "room_id", "sender", "type", "state_key", "redacts")


def serialize_event(event: Event, device_id: str | None = None, redacted_because: Any = None,
                    now: int | None = None, include_room_id: bool = True) -> dict[str, Any]:
    pdu = event.pdu
    if redacted_because is not None or event.internal.redacted_by:
        pdu = redact_pdu(pdu, event.room_version)
    out: dict[str, Any] = {"event_id": event.event_id, "room_id": event.room_id}
    for key in ("content", "origin_server_ts", "sender", "type", "state_key"):
        if key in pdu:
            out[key] = pdu[key]
    if "content" not in out:
        out["content"] = {}
    if event.type == "m.room.redaction":
        target = event.redacts
        if target:
            out["redacts"] = target
    if not include_room_id:
        del out["room_id"]
    unsigned: dict[str, Any] = {}
    stored_unsigned = event.pdu.get("unsigned") or {}
    for key in ("prev_content", "replaces_state", "prev_sender"):
        if key in stored_unsigned:
            unsigned[key] = stored_unsigned[key]
    unsigned["age"] = max(0, (now or now_ms()) - event.origin_server_ts)
    txn = event.internal.txn
    if txn and device_id is not None and txn[0] == device_id:
        unsigned["transaction_id"] = txn[1]
    if redacted_because is not None:
        unsigned["redacted_because"] = redacted_because
    out["unsigned"] = unsigned
    return out


async def serialize_events(hs: Any, events: list[Event], device_id: str | None = None,
                           include_room_id: bool = True) -> list[dict[str, Any]]:
    """Serialize a batch, fetching the redaction events of redacted ones in one query."""
    redaction_ids = [e.internal.redacted_by for e in events if e.internal.redacted_by]
    redactions = await hs.event_store.get_events(redaction_ids) if redaction_ids else {}
    now = now_ms()
    out = []
    for e in events:
        because = None
        rid = e.internal.redacted_by
        if rid and rid in redactions:
            because = serialize_event(redactions[rid], now=now)
        out.append(serialize_event(e, device_id, because, now, include_room_id))
    return out
