"""The event model: an immutable PDU plus the room version that gives it meaning.

The PDU dict is what is signed, hashed and sent over federation; `Event` adds typed accessors and the
event ID (which for room versions 3+ is computed from the PDU, not stored in it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from hs.events.room_versions import EventFormat, RoomVersion

JsonDict = dict[str, Any]
StateKey = tuple[str, str]


@dataclass(slots=True)
class EventMetadata:
    """What this server knows about an event beyond its PDU, never sent to anybody. An event built
    but not yet persisted has none of it; the store fills it in when it writes or reads the event."""

    stream_ordering: int | None = None  # its position in the events stream
    instance_name: str | None = None  # the process that persisted it
    state_group_before: int | None = None  # the room's state before the event ...
    state_group_after: int | None = None  # ... and after it (the same for a message)
    txn: tuple[str, str] | None = None  # (device ID, transaction ID) of the request that sent it
    redacted_by: str | None = None  # the ID of the redaction that redacted it
    rejected: bool = False  # the auth rules rejected it (state resolution does not use it for checks)
    # Held without a place in the room's timeline (state or auth chain from another server, or
    # rejected, or soft-failed): see the event_outliers table.
    outlier: bool = False
    soft_failed: bool = False

    def position(self) -> int:
        """The stream ordering of an event known to be persisted; asking for an unpersisted
        event's is a bug."""
        if self.stream_ordering is None:
            raise ValueError("the event has not been persisted: it has no stream ordering")
        return self.stream_ordering


class Event:
    __slots__ = ("pdu", "room_version", "event_id", "internal")

    def __init__(self, pdu: JsonDict, room_version: RoomVersion, event_id: str | None = None) -> None:
        self.pdu = pdu
        self.room_version = room_version
        if event_id is None:
            if room_version.event_format == EventFormat.V1:
                event_id = pdu["event_id"]
            else:
                from hs.events.hashing import compute_event_id

                event_id = compute_event_id(pdu, room_version)
        self.event_id: str = event_id
        self.internal = EventMetadata()

    # -- accessors -----------------------------------------------------------------------------------
    @property
    def type(self) -> str:
        # The PDU's fields were checked when it was built or received: these casts only name them.
        return cast(str, self.pdu["type"])

    @property
    def sender(self) -> str:
        return cast(str, self.pdu["sender"])

    @property
    def room_id(self) -> str:
        """The room ID. In room v12 the create event carries none: its room ID derives from its ID."""
        rid = self.pdu.get("room_id")
        if rid is None and self.room_version.room_id_from_create_event and self.type == "m.room.create":
            return "!" + self.event_id[1:]
        return rid  # type: ignore[return-value]

    @property
    def content(self) -> JsonDict:
        return cast(JsonDict, self.pdu.get("content", {}))

    @property
    def state_key(self) -> str | None:
        return self.pdu.get("state_key")

    def is_state(self) -> bool:
        return "state_key" in self.pdu

    @property
    def state_tuple(self) -> StateKey:
        return (self.type, self.pdu["state_key"])

    @property
    def depth(self) -> int:
        return int(self.pdu.get("depth", 0))

    @property
    def origin_server_ts(self) -> int:
        return int(self.pdu.get("origin_server_ts", 0))

    @property
    def redacts(self) -> str | None:
        """Target of a redaction: top level before v11, in content from v11 (both accepted)."""
        if self.room_version.updated_redaction_rules:
            return self.content.get("redacts") or self.pdu.get("redacts")
        return self.pdu.get("redacts")

    @property
    def relation(self) -> tuple[str, str] | None:
        """(rel_type, parent event ID) of an event that relates to another (a thread reply, an
        edit, a reaction, a reference); a reply's bare `m.in_reply_to` is not a relation."""
        rel = self.content.get("m.relates_to")
        if not isinstance(rel, dict):
            return None
        rel_type, parent = rel.get("rel_type"), rel.get("event_id")
        if isinstance(rel_type, str) and isinstance(parent, str) and rel_type and parent:
            return rel_type, parent
        return None

    @property
    def membership(self) -> str | None:
        return self.content.get("membership") if self.type == "m.room.member" else None

    def _ids(self, key: str) -> list[str]:
        refs = self.pdu.get(key, [])
        if self.room_version.event_format == EventFormat.V1:
            return [r[0] for r in refs]
        return list(refs)

    @property
    def prev_event_ids(self) -> list[str]:
        return self._ids("prev_events")

    @property
    def auth_event_ids(self) -> list[str]:
        return self._ids("auth_events")

    def __repr__(self) -> str:
        return f"<Event {self.event_id} {self.type} {self.state_key!r} {self.sender}>"
