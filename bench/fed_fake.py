"""The fake remote servers of bench/bench_federation.py: tests/federation/fake_remote.py's FakeRemote
(TLS on loopback, a certificate from the test CA, its own ed25519 key, X-Matrix signed requests),
extended with what the benchmark needs of it:

- arrival times: every PDU received in a transaction is noted with the moment its request body was
  read (`arrivals`), so outbound latency can be timed;
- a hosted room: `host_room()` generates a whole room offline (create, power levels, join rules,
  history visibility, thousands of member joins and other state events, all signed with our key),
  and make_join / send_join v2 / state_ids / event / event_auth answer for it, so that the server
  under test can join it;
- `query/profile`, which a server may ask about a remote user who joined one of its rooms.

The send_join answer for a hosted room (several MB of JSON) is encoded once when the room is made,
so that the fake server's own encoding time is not counted in the join it serves.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from hs.events.event import Event, JsonDict
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from hs.util import now_ms
from tests.federation.fake_remote import FakeRemote, FakeRoom
from tests.federation.tls import TestCA

MEMBER = "m.room.member"


class HostedRoom:
    """A room this fake server is the resident server of, with its send_join answer pre-encoded."""

    def __init__(self, room: FakeRoom, creator: str) -> None:
        self.room = room
        self.creator = creator
        self.state_json = b"[]"  # the state as a JSON array, encoded once
        self.auth_chain_json = b"[]"
        self.joins: list[str] = []  # event IDs of joins received through send_join


class BenchRemote(FakeRemote):
    """A FakeRemote that records PDU arrivals and can host a room."""

    def __init__(self, ca: TestCA, directory: Path) -> None:
        super().__init__(ca, directory)
        self.arrivals: dict[str, float] = {}  # event ID -> time.perf_counter() when it arrived
        self.hosted: dict[str, HostedRoom] = {}
        self.on_arrival: Callable[[], None] | None = None  # called after each transaction received
        self.serve_gaps = True

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record], client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_get("/_matrix/key/v2/server", self._keys)
        r.add_get("/_matrix/key/v2/server/{keyId}", self._keys)
        r.add_put("/_matrix/federation/v1/send/{txnId}", self._on_send)
        r.add_get("/_matrix/federation/v1/event/{eventId}", self._on_event)
        r.add_get("/_matrix/federation/v1/event_auth/{roomId}/{eventId}", self._on_event_auth)
        r.add_post("/_matrix/federation/v1/get_missing_events/{roomId}", self._on_missing)
        r.add_get("/_matrix/federation/v1/state_ids/{roomId}", self._on_state_ids)
        r.add_get("/_matrix/federation/v1/state/{roomId}", self._on_state)
        r.add_get("/_matrix/federation/v1/make_join/{roomId}/{userId}", self._on_make_join)
        r.add_put("/_matrix/federation/v2/send_join/{roomId}/{eventId}", self._on_send_join)
        r.add_get("/_matrix/federation/v1/query/profile", self._on_profile)
        r.add_get("/_matrix/federation/v1/version", self._on_version)
        r.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert.cert_path), str(self.cert.key_path))
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()

    # -- receiving ---------------------------------------------------------------------------------
    async def _on_send(self, request: web.Request) -> web.Response:
        raw = await request.read()
        arrived = time.perf_counter()
        body = json.loads(raw)
        results: dict[str, JsonDict] = {}
        for pdu in body.get("pdus", []):
            room = self.rooms.get(pdu.get("room_id"))
            if room is None:
                continue
            event_id = self._event_id(pdu, room.rv)
            self.arrivals.setdefault(event_id, arrived)
            if event_id not in self.events:
                self.take(room, event_id, pdu)
            results[event_id] = {}
        if self.on_arrival is not None:
            self.on_arrival()
        return web.json_response({"pdus": results})

    async def _on_version(self, request: web.Request) -> web.Response:
        return web.json_response({"server": {"name": "hs-bench-fake", "version": "0"}})

    async def _on_profile(self, request: web.Request) -> web.Response:
        user_id = request.query.get("user_id", "")
        if not user_id.endswith(":" + self.server_name):
            return self._error(404, "M_NOT_FOUND", "not our user")
        localpart = user_id[1:].split(":", 1)[0]
        field = request.query.get("field")
        profile = {"displayname": localpart}
        return web.json_response({field: profile[field]} if field in profile else profile)

    # -- a hosted room -----------------------------------------------------------------------------
    def host_room(self, members: int, state_events: int, version: str = "10") -> str:
        """Generate a public room held by us: `members` joined users of ours (the creator among them)
        and `state_events` state events in all (the rest are `bench.state` events with distinct state
        keys), on a linear DAG. Returns the room ID."""
        rv: RoomVersion = KNOWN_ROOM_VERSIONS[version]
        creator = self.user_id("creator")
        create_content: JsonDict = {"room_version": version}
        if not rv.implicit_room_creator:
            create_content["creator"] = creator
        if rv.room_id_from_create_event:
            # v12: no room ID in the create event; the room ID is the create event's ID, as a room ID.
            create: JsonDict = {"sender": creator, "type": "m.room.create", "state_key": "",
                                "content": {**create_content, "nonce": self.port}, "depth": 1,
                                "prev_events": [], "auth_events": [], "origin_server_ts": now_ms()}
            create_id = self._finish(create, rv)
            room_id = "!" + create_id[1:]
            room = self.rooms[room_id] = FakeRoom(room_id, rv)
            self.take(room, create_id, create)
        else:
            room_id = f"!big{len(self.hosted)}x{self.port}:{self.server_name}"
            room = self.rooms[room_id] = FakeRoom(room_id, rv)
            self.build(room_id, creator, "m.room.create", create_content, "", prev_events=[])
        self.build(room_id, creator, MEMBER, {"membership": "join"}, creator)
        self.build(room_id, creator, "m.room.power_levels", {
            "users": {creator: 100}, "users_default": 0, "events_default": 0, "state_default": 50,
            "ban": 50, "kick": 50, "redact": 50, "invite": 0, "events": {}}, "")
        self.build(room_id, creator, "m.room.join_rules", {"join_rule": "public"}, "")
        self.build(room_id, creator, "m.room.history_visibility", {"history_visibility": "shared"}, "")
        for i in range(1, members):
            user = self.user_id(f"member{i}")
            self.build(room_id, user, MEMBER, {"membership": "join", "displayname": f"Member {i}"}, user)
        for i in range(state_events - len(room.state)):
            self.build(room_id, creator, "bench.state", {"n": i, "text": f"state event number {i}"}, f"key{i}")
        hosted = self.hosted[room_id] = HostedRoom(room, creator)
        self._encode_join_answer(hosted)
        return room_id

    def _encode_join_answer(self, hosted: HostedRoom) -> None:
        state_ids = list(hosted.room.state.values())
        hosted.state_json = json.dumps([self.events[e] for e in state_ids], separators=(",", ":")).encode()
        chain = self.auth_chain(state_ids)
        hosted.auth_chain_json = json.dumps([self.events[e] for e in chain], separators=(",", ":")).encode()

    def _hosted(self, request: web.Request) -> HostedRoom | None:
        return self.hosted.get(unquote(request.match_info["roomId"]))

    async def _on_make_join(self, request: web.Request) -> web.Response:
        hosted = self._hosted(request)
        if hosted is None:
            return self._error(404, "M_NOT_FOUND", "unknown room")
        room = hosted.room
        user_id = unquote(request.match_info["userId"])
        if room.rv.identifier not in request.query.getall("ver", []):
            return self._error(400, "M_INCOMPATIBLE_ROOM_VERSION", "room version not supported by you")
        auth_keys = [("m.room.power_levels", ""), ("m.room.join_rules", "")]
        if not room.rv.room_id_from_create_event:
            auth_keys.insert(0, ("m.room.create", ""))
        depth = max(self.events[h]["depth"] for h in room.heads) + 1
        template: JsonDict = {
            "room_id": room.room_id, "sender": user_id, "type": MEMBER, "state_key": user_id,
            "content": {"membership": "join"}, "depth": depth, "prev_events": list(room.heads),
            "auth_events": [room.state[k] for k in auth_keys], "origin_server_ts": now_ms(),
        }
        if not room.rv.updated_redaction_rules:
            template["origin"] = self.server_name
        return web.json_response({"event": template, "room_version": room.rv.identifier})

    async def _on_send_join(self, request: web.Request) -> web.Response:
        hosted = self._hosted(request)
        if hosted is None:
            return self._error(404, "M_NOT_FOUND", "unknown room")
        pdu = await request.json()
        room = hosted.room
        event_id = Event(pdu, room.rv).event_id
        if event_id != unquote(request.match_info["eventId"]):
            return self._error(400, "M_BAD_JSON", "event ID does not match")
        # The answer holds the state before the join: the encoded state unless a join came since.
        if hosted.joins:
            self._encode_join_answer(hosted)
        hosted.joins.append(event_id)
        self.take(room, event_id, pdu)
        body = b"".join([
            b'{"origin":', json.dumps(self.server_name).encode(),
            b',"members_omitted":false,"servers_in_room":', json.dumps([self.server_name]).encode(),
            b',"event":', json.dumps(pdu, separators=(",", ":")).encode(),
            b',"state":', hosted.state_json, b',"auth_chain":', hosted.auth_chain_json, b"}"])
        return web.Response(body=body, content_type="application/json")

    def _room_of(self, request: web.Request) -> FakeRoom | None:
        return self.rooms.get(unquote(request.match_info["roomId"]))

    def _state_at(self, room: FakeRoom, event_id: str) -> list[str]:
        """The state at (before) an event: our current view of the room, minus the event itself.
        Exact for what the benchmark does (a linear DAG where only joins and messages follow the
        state the room started with), and all a server filling a gap needs."""
        return [e for e in room.state.values() if e != event_id]

    async def _on_state_ids(self, request: web.Request) -> web.Response:
        room = self._room_of(request)
        event_id = request.query.get("event_id", "")
        if room is None or event_id not in self.events:
            return self._error(404, "M_NOT_FOUND", "unknown room or event")
        state_ids = self._state_at(room, event_id)
        return web.json_response({"pdu_ids": state_ids, "auth_chain_ids": self.auth_chain(state_ids)})

    async def _on_state(self, request: web.Request) -> web.Response:
        room = self._room_of(request)
        event_id = request.query.get("event_id", "")
        if room is None or event_id not in self.events:
            return self._error(404, "M_NOT_FOUND", "unknown room or event")
        state_ids = self._state_at(room, event_id)
        return web.json_response({"pdus": [self.events[e] for e in state_ids],
                                  "auth_chain": [self.events[e] for e in self.auth_chain(state_ids)]})

    async def _on_missing(self, request: web.Request) -> web.Response:
        """get_missing_events, answered from what we hold: walk back from `latest_events` until
        `earliest_events`, at most `limit` events, oldest first."""
        body: dict[str, Any] = await request.json()
        earliest = set(body.get("earliest_events", []))
        limit = min(int(body.get("limit", 10)), 100)
        found: list[JsonDict] = []
        seen: set[str] = set()
        todo = [p for e in body.get("latest_events", []) if e in self.events
                for p in self._refs(self.events[e]["prev_events"])]
        while todo and len(found) < limit:
            eid = todo.pop(0)
            if eid in seen or eid in earliest or eid not in self.events:
                continue
            seen.add(eid)
            found.append(self.events[eid])
            todo.extend(self._refs(self.events[eid]["prev_events"]))
        found.sort(key=lambda p: p["depth"])
        return web.json_response({"events": found})
