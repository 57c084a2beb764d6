"""A room as others see it before joining: its directory entry (name, topic, canonical alias,
avatar, member count, join rule, type), shown by /publicRooms and space hierarchies, and the room
summary of GET /_matrix/client/v1/room_summary/{roomIdOrAlias} (the entry with the version, encryption
and the requester's membership)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hs.errors import invalid_param, not_found
from hs.events.event import JsonDict

if TYPE_CHECKING:
    from hs.server import HomeServer


class RoomSummaries:
    """A room's public face: its directory entry, and the summary clients preview a room with."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def summary(self, user_id: str | None, room_id_or_alias: str) -> dict[str, Any]:
        """GET /_matrix/client/v1/room_summary/{roomIdOrAlias}, for whoever may preview the room."""
        room_id = room_id_or_alias
        if room_id_or_alias.startswith("#"):
            entry = await self.hs.room_store.get_alias(room_id_or_alias)
            if entry is None:
                raise not_found("Room not found")
            room_id = entry["room_id"]
        elif not room_id_or_alias.startswith("!"):
            raise invalid_param("Not a room ID or alias")
        if not await self.hs.spaces.may_preview(user_id, room_id):
            raise not_found("Room not found, or you may not see it")
        summary = await self.entry(room_id)
        if summary is None:
            raise not_found("Room not found, or you may not see it")
        version = await self.hs.room_store.get_room_version_id(room_id)
        if version is not None:
            summary["room_version"] = version
        encryption = await self.hs.event_store.get_current_state_event(room_id, "m.room.encryption")
        algorithm = encryption.content.get("algorithm") if encryption is not None else None
        if isinstance(algorithm, str):
            summary["encryption"] = algorithm
        if user_id is not None:
            membership = await self.hs.event_store.get_membership(room_id, user_id)
            if membership is not None:
                summary["membership"] = membership[0]
        return summary

    async def entry(self, room_id: str) -> JsonDict | None:
        """A room as the room directory and space hierarchies show it (None if nobody is in it)."""
        keys: list[tuple[str, str | None]] = [
            ("m.room.create", ""), ("m.room.name", ""), ("m.room.topic", ""), ("m.room.canonical_alias", ""),
            ("m.room.join_rules", ""), ("m.room.history_visibility", ""), ("m.room.guest_access", ""),
            ("m.room.avatar", "")]
        store = self.hs.event_store
        state = {k: ev.content for k, ev in (await store.get_current_state_events(room_id, keys)).items()}
        joined = len(await store.get_joined_members(room_id))
        if joined == 0:
            return None
        entry: JsonDict = {
            "room_id": room_id,
            "num_joined_members": joined,
            "world_readable": state.get(("m.room.history_visibility", ""), {}).get("history_visibility")
            == "world_readable",
            "guest_can_join": state.get(("m.room.guest_access", ""), {}).get("guest_access") == "can_join",
            "join_rule": state.get(("m.room.join_rules", ""), {}).get("join_rule", "invite"),
        }
        name = state.get(("m.room.name", ""), {}).get("name")
        if isinstance(name, str) and name:
            entry["name"] = name
        topic = _plain_topic(state.get(("m.room.topic", "")))
        if topic:
            entry["topic"] = topic
        alias = state.get(("m.room.canonical_alias", ""), {}).get("alias")
        if isinstance(alias, str) and alias:
            entry["canonical_alias"] = alias
        avatar = state.get(("m.room.avatar", ""), {}).get("url")
        if isinstance(avatar, str) and avatar:
            entry["avatar_url"] = avatar
        room_type = state.get(("m.room.create", ""), {}).get("type")
        if isinstance(room_type, str):
            entry["room_type"] = room_type
        return entry


def _plain_topic(content: JsonDict | None) -> str | None:
    if not content:
        return None
    block = content.get("m.topic")
    if isinstance(block, dict) and isinstance(block.get("m.text"), list):
        for rep in block["m.text"]:
            if isinstance(rep, dict) and rep.get("mimetype", "text/plain") == "text/plain" and isinstance(
                    rep.get("body"), str):
                return str(rep["body"])
    topic = content.get("topic")
    return topic if isinstance(topic, str) else None

