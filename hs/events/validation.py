"""Event size limits (client-server API, "Size limits"; appendices, identifier grammar).

Oversized events are refused both when clients send them and when they arrive over federation, so
that every server in a room agrees on which events exist.
"""

from __future__ import annotations

from typing import Any

from hs.events.canonical_json import encode_canonical_json

JsonDict = dict[str, Any]

MAX_PDU_SIZE = 65536
# Per-key limits in bytes of UTF-8: user, room and event IDs are capped at 255 bytes by the identifier
# grammar, and state_key/type directly by the size-limit section.
MAX_FIELD_BYTES: dict[str, int] = {
    "sender": 255,
    "room_id": 255,
    "state_key": 255,
    "type": 255,
    "event_id": 255,
}


class EventTooLargeError(ValueError):
    """The event or one of its size-limited keys is over the spec's limit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def check_event_size(pdu: JsonDict, *, floats_checked: bool = False) -> None:
    """Raise `EventTooLargeError` if ``pdu`` breaks a spec size limit.

    The whole-event limit counts the canonical JSON of the federation form including signatures, but
    not ``unsigned``: unsigned data is added in transit by other servers, and letting it decide whether
    an event is acceptable would make servers disagree about the same event.
    """
    for key, limit in MAX_FIELD_BYTES.items():
        value = pdu.get(key)
        if isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) > limit:
            raise EventTooLargeError(f"'{key}' is longer than {limit} bytes", field=key)
    body = pdu if "unsigned" not in pdu else {k: v for k, v in pdu.items() if k != "unsigned"}
    size = len(encode_canonical_json(body, floats_checked=floats_checked))
    if size > MAX_PDU_SIZE:
        raise EventTooLargeError(f"event is {size} bytes, over the {MAX_PDU_SIZE} byte limit")
