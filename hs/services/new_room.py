"""Creating a room all-or-nothing: createRoom and room upgrades both end here.

A new room is its create event, the events that follow it (the creator's join, power levels, join
rules, initial state, name, topic, invites; an upgrade's copied state) and a few rows besides events
(`NewRoom`: the room row, its alias, an upgrade's moved aliases and listing). Validating the request
first, as Synapse does, is not enough on its own: a step can still fail (an event the auth rules
refuse, content that is not canonical JSON, too large an event, the database), and sending the events
one by one then left a half-built room behind, and another on each retry. So here:

- every event is *built* first, on the room's event persister under the room's lock, each on the one
  before it in memory (`EventSender.persist_new_room`): any refusal happens before anything is
  written;
- the events and the rows are then *persisted in one database transaction* (one batch of the
  persister's general transaction), on either engine: they commit together or not at all;
- in a cluster the create event is built where the request arrived (a v12 room ID is its hash, which
  names the persister) and handed over with the list of events to build (`ReplicationClient.
  create_room`), so the build and the transaction above happen in that one process. A call retried
  while the persister lives is answered from its replies cache; a persister that dies between commit
  and reply makes the retry find the room ID taken, and the request ends with another complete room
  (the first stays whole too: never half of one).

v12 room IDs are create event hashes, so two identical create events would be one room. Each
process gives its create events strictly increasing `origin_server_ts` values (two requests by one
user in the same millisecond get different rooms), and a collision that still happens (processes of a
cluster creating the same event, a clock stepping back) is found inside the transaction (the room row
exists) and retried with a later timestamp, as Synapse does; it never reaches the client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hs.db.stores.rooms import NewRoom, RoomIdTaken
from hs.errors import unavailable
from hs.events.event import JsonDict
from hs.events.room_versions import RoomVersion
from hs.util import random_string

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

# Create events built for one request before giving up (each collision needs a concurrent identical one).
ROOM_ID_ATTEMPTS = 16
@dataclass(frozen=True)
class InitialEvent:
    """One event of a new room after its create event, built on the one before it."""

    sender: str
    type: str
    content: JsonDict
    state_key: str | None = ""
    # Left out (and logged) if it cannot be built: an upgrade copies what the new version accepts.
    optional: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"sender": self.sender, "type": self.type, "content": self.content, "state_key": self.state_key,
                "optional": self.optional}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InitialEvent:
        return cls(str(data["sender"]), str(data["type"]), dict(data["content"]), data.get("state_key"),
                   bool(data.get("optional")))


async def create_room(hs: HomeServer, rv: RoomVersion, creator: str, create_content: JsonDict,
                      initial: list[InitialEvent], room: NewRoom) -> str:
    """Create a room with these events and rows, all of them or none; returns its ID."""
    sender = hs.event_sender
    after_ts: int | None = None
    for _ in range(ROOM_ID_ATTEMPTS):
        room_id = None if rv.room_id_from_create_event else new_room_id(hs)
        create = sender.build_create_event(rv, creator, create_content, room_id, after_ts)
        try:
            if hs.events_stream.is_writer_for_room(create.room_id):
                await sender.persist_new_room(create, initial, room)
            else:
                await hs.replication_client.create_room(create, initial, room)
            return create.room_id
        except RoomIdTaken:
            logger.info("room ID %s is taken; building another create event", create.room_id)
            after_ts = create.origin_server_ts
    raise unavailable("Could not find a free room ID; please try again")


def new_room_id(hs: HomeServer) -> str:
    """A fresh v1-v11 room ID; with several event persisters, one this instance writes if it can."""
    stream = hs.events_stream
    for _ in range(64):
        room_id = f"!{random_string(18)}:{hs.server_name}"
        if not stream.is_writer or stream.is_writer_for_room(room_id):
            return room_id
    return room_id
