"""Typed calls to other servers' room endpoints, the ones event handling and joins make.

Each method is one Server-Server API request; responses are checked for shape (a list where a list
is due, bounded lengths) so that callers deal in PDUs and IDs, never in a remote server's surprises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from hs.events.event import JsonDict

if TYPE_CHECKING:
    from hs.federation.client import FederationClient

# The most events one response may carry (state of a big room, an auth chain): beyond, it is refused.
MAX_EVENTS_PER_RESPONSE = 200_000
# Bodies of state and join responses may be large (a room of thousands of members).
MAX_STATE_RESPONSE_BYTES = 200 * 1024 * 1024


class RemoteResponseError(Exception):
    """A remote server answered with something that is not what the API promises."""


def _q(value: str) -> str:
    return quote(value, safe="")


def _pdus(value: Any, what: str) -> list[JsonDict]:
    if not isinstance(value, list) or len(value) > MAX_EVENTS_PER_RESPONSE:
        raise RemoteResponseError(f"{what}: expected a list of events")
    return [p for p in value if isinstance(p, dict)]


def _ids(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_EVENTS_PER_RESPONSE:
        raise RemoteResponseError(f"{what}: expected a list of event IDs")
    return [i for i in value if isinstance(i, str)]


@dataclass
class JoinTemplate:
    room_version: str
    event: JsonDict


@dataclass
class SendJoinResult:
    state: list[JsonDict]
    auth_chain: list[JsonDict]
    event: JsonDict | None  # the join as the resident server signed it (restricted joins)
    servers_in_room: list[str] | None


class RemoteRooms:
    """Room reads and membership handshakes with another server."""

    def __init__(self, client: FederationClient) -> None:
        self.client = client

    async def get_event(self, destination: str, event_id: str) -> JsonDict:
        body = await self.client.get_json(destination, f"/_matrix/federation/v1/event/{_q(event_id)}")
        pdus = _pdus(body.get("pdus") if isinstance(body, dict) else None, "event")
        if len(pdus) != 1:
            raise RemoteResponseError(f"event {event_id}: expected one PDU, got {len(pdus)}")
        return pdus[0]

    async def get_state_ids(self, destination: str, room_id: str, event_id: str) -> tuple[list[str], list[str]]:
        """(state event IDs, auth chain IDs) at `event_id` (the state before it, per the spec)."""
        body = await self.client.get_json(destination, f"/_matrix/federation/v1/state_ids/{_q(room_id)}",
                                          {"event_id": event_id})
        if not isinstance(body, dict):
            raise RemoteResponseError("state_ids: expected an object")
        return _ids(body.get("pdu_ids"), "state_ids pdu_ids"), _ids(body.get("auth_chain_ids"), "state_ids auth")

    async def get_event_auth(self, destination: str, room_id: str, event_id: str) -> list[JsonDict]:
        body = await self.client.get_json(
            destination, f"/_matrix/federation/v1/event_auth/{_q(room_id)}/{_q(event_id)}",
            max_size=MAX_STATE_RESPONSE_BYTES)
        return _pdus(body.get("auth_chain") if isinstance(body, dict) else None, "event_auth")

    async def get_missing_events(self, destination: str, room_id: str, earliest: list[str], latest: list[str],
                                 limit: int, min_depth: int) -> list[JsonDict]:
        body = await self.client.post_json(
            destination, f"/_matrix/federation/v1/get_missing_events/{_q(room_id)}",
            {"earliest_events": earliest, "latest_events": latest, "limit": limit, "min_depth": min_depth})
        return _pdus(body.get("events") if isinstance(body, dict) else None, "get_missing_events")[:limit]

    async def backfill(self, destination: str, room_id: str, from_ids: list[str], limit: int) -> list[JsonDict]:
        body = await self.client.get_json(destination, f"/_matrix/federation/v1/backfill/{_q(room_id)}",
                                          {"v": from_ids, "limit": str(limit)})
        return _pdus(body.get("pdus") if isinstance(body, dict) else None, "backfill")[:limit]

    async def make_membership(self, destination: str, kind: str, room_id: str, user_id: str,
                              versions: list[str]) -> JoinTemplate:
        """`make_join`, `make_leave` or `make_knock`: the event template the resident server offers."""
        query: dict[str, str | list[str]] = {"ver": versions} if kind in ("join", "knock") else {}
        body = await self.client.get_json(
            destination, f"/_matrix/federation/v1/make_{kind}/{_q(room_id)}/{_q(user_id)}", query)
        if not isinstance(body, dict) or not isinstance(body.get("event"), dict):
            raise RemoteResponseError(f"make_{kind}: no event template")
        version = body.get("room_version", "1")
        if not isinstance(version, str):
            raise RemoteResponseError(f"make_{kind}: room_version is not a string")
        return JoinTemplate(version, body["event"])

    async def send_join(self, destination: str, room_id: str, event_id: str, pdu: JsonDict) -> SendJoinResult:
        body = await self.client.put_json(
            destination, f"/_matrix/federation/v2/send_join/{_q(room_id)}/{_q(event_id)}", pdu,
            max_size=MAX_STATE_RESPONSE_BYTES, timeout=300.0)
        if not isinstance(body, dict):
            raise RemoteResponseError("send_join: expected an object")
        event = body.get("event")
        servers = body.get("servers_in_room")
        return SendJoinResult(_pdus(body.get("state"), "send_join state"),
                              _pdus(body.get("auth_chain"), "send_join auth_chain"),
                              event if isinstance(event, dict) else None,
                              [s for s in servers if isinstance(s, str)] if isinstance(servers, list) else None)

    async def send_leave(self, destination: str, room_id: str, event_id: str, pdu: JsonDict) -> None:
        await self.client.put_json(
            destination, f"/_matrix/federation/v2/send_leave/{_q(room_id)}/{_q(event_id)}", pdu)

    async def send_knock(self, destination: str, room_id: str, event_id: str, pdu: JsonDict) -> list[JsonDict]:
        body = await self.client.put_json(
            destination, f"/_matrix/federation/v1/send_knock/{_q(room_id)}/{_q(event_id)}", pdu)
        state = body.get("knock_room_state") if isinstance(body, dict) else None
        return [s for s in state if isinstance(s, dict)] if isinstance(state, list) else []

    async def invite(self, destination: str, room_id: str, event_id: str, pdu: JsonDict, room_version: str,
                     invite_room_state: list[JsonDict]) -> JsonDict:
        """v2 invite: the invitee's server returns the invite event with its signature added."""
        body = await self.client.put_json(
            destination, f"/_matrix/federation/v2/invite/{_q(room_id)}/{_q(event_id)}",
            {"event": pdu, "room_version": room_version, "invite_room_state": invite_room_state})
        if not isinstance(body, dict) or not isinstance(body.get("event"), dict):
            raise RemoteResponseError("invite: no signed event in the response")
        signed: JsonDict = body["event"]
        return signed
