"""A fake remote homeserver a test controls entirely: a small TLS aiohttp server with its own signing
key, reachable as `localhost:<port>` with a certificate from the test CA.

It publishes its key (`/_matrix/key/v2/server`) so the server under test can check its signatures,
joins rooms there with make_join/send_join, builds and signs events of its own (or crafted, broken
ones), and sends them in signed transactions. What the server under test sends back (transactions)
is recorded; its reads of our events (`/event`, `/event_auth`) are answered from what we hold, while
gap filling (`get_missing_events`, `state_ids`) is refused unless a test enables it.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web
from yarl import URL

from hs.events.auth import auth_types_for_event
from hs.events.event import Event, JsonDict, StateKey
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion
from hs.events.signing import SigningKey, finish_local_event, sign_json
from hs.federation.xmatrix import sign_request
from hs.util import now_ms
from tests.federation.tls import TestCA
from tests.services import free_port


def q(value: str) -> str:
    return quote(value, safe="")


class FakeRoom:
    """What the fake server knows of one room: its version, its view of the state, its heads."""

    def __init__(self, room_id: str, rv: RoomVersion) -> None:
        self.room_id = room_id
        self.rv = rv
        self.state: dict[StateKey, str] = {}
        self.heads: list[str] = []


class FakeRemote:
    """One fake server. `await start()`, then `join()`, `build()`, `send_transaction()`; `stop()`."""

    def __init__(self, ca: TestCA, directory: Path) -> None:
        self.port = free_port()
        self.server_name = f"localhost:{self.port}"
        self.key = SigningKey.generate()
        self.cert = ca.issue(directory / f"fake-remote-{self.port}")
        self.events: dict[str, JsonDict] = {}  # every PDU we hold, by event ID
        self.rooms: dict[str, FakeRoom] = {}
        self.transactions: list[JsonDict] = []  # received from the server under test
        self.requests: list[str] = []  # "METHOD path" of every request received
        # Gap filling: answer get_missing_events, and state_ids (for our own events), or 404.
        self.serve_missing = False
        self.serve_state = False
        self.state_before: dict[str, dict[StateKey, str]] = {}  # of events we built
        self.extra_state_ids: list[str] = []  # added to every state_ids answer (a lying server)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    # -- serving ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/_matrix/key/v2/server", self._keys)
        app.router.add_get("/_matrix/key/v2/server/{keyId}", self._keys)
        app.router.add_put("/_matrix/federation/v1/send/{txnId}", self._on_send)
        app.router.add_get("/_matrix/federation/v1/event/{eventId}", self._on_event)
        app.router.add_get("/_matrix/federation/v1/event_auth/{roomId}/{eventId}", self._on_event_auth)
        app.router.add_post("/_matrix/federation/v1/get_missing_events/{roomId}", self._on_missing)
        app.router.add_get("/_matrix/federation/v1/state_ids/{roomId}", self._on_state_ids)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert.cert_path), str(self.cert.key_path))
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        response: web.StreamResponse = await handler(request)
        return response

    @staticmethod
    def _error(status: int, errcode: str, error: str) -> web.Response:
        return web.json_response({"errcode": errcode, "error": error}, status=status)

    async def _keys(self, request: web.Request) -> web.Response:
        body = {"server_name": self.server_name, "old_verify_keys": {},
                "verify_keys": {self.key.key_id: {"key": self.key.verify_key_base64}},
                "valid_until_ts": now_ms() + 24 * 3600 * 1000}
        return web.json_response(sign_json(body, self.server_name, self.key))

    async def _on_send(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.transactions.append(body)
        results: dict[str, JsonDict] = {}
        for pdu in body.get("pdus", []):
            room = self.rooms.get(pdu.get("room_id"))
            if room is None:
                continue
            event_id = self._event_id(pdu, room.rv)
            self.take(room, event_id, pdu)
            results[event_id] = {}
        return web.json_response({"pdus": results})

    async def _on_event(self, request: web.Request) -> web.Response:
        pdu = self.events.get(request.match_info["eventId"])
        if pdu is None:
            return self._error(404, "M_NOT_FOUND", "unknown event")
        return web.json_response({"origin": self.server_name, "origin_server_ts": now_ms(), "pdus": [pdu]})

    async def _on_event_auth(self, request: web.Request) -> web.Response:
        event_id = request.match_info["eventId"]
        if event_id not in self.events:
            return self._error(404, "M_NOT_FOUND", "unknown event")
        return web.json_response({"auth_chain": [self.events[e] for e in self.auth_chain([event_id])]})

    async def _on_missing(self, request: web.Request) -> web.Response:
        """The events before `latest_events` back to `earliest_events` (excluded), oldest first."""
        if not self.serve_missing:
            return self._error(404, "M_NOT_FOUND", "this fake server does not fill gaps")
        body = await request.json()
        earliest, limit = set(body["earliest_events"]), body.get("limit", 10)
        found: dict[str, JsonDict] = {}
        todo = [p for e in body["latest_events"] if e in self.events for p in self._refs(self.events[e]["prev_events"])]
        while todo and len(found) < limit:
            eid = todo.pop(0)
            if eid in earliest or eid in found or eid not in self.events:
                continue
            found[eid] = self.events[eid]
            todo.extend(self._refs(self.events[eid]["prev_events"]))
        return web.json_response({"events": sorted(found.values(), key=lambda p: p["depth"])})

    async def _on_state_ids(self, request: web.Request) -> web.Response:
        event_id = request.query.get("event_id", "")
        if not self.serve_state or event_id not in self.state_before:
            return self._error(404, "M_NOT_FOUND", "this fake server does not serve that state")
        state = list(self.state_before[event_id].values())
        return web.json_response({"pdu_ids": state + self.extra_state_ids, "auth_chain_ids": self.auth_chain(state)})

    async def _unknown(self, request: web.Request) -> web.Response:
        return self._error(404, "M_UNRECOGNIZED", "fake remote: not implemented")

    def auth_chain(self, event_ids: Iterable[str]) -> list[str]:
        seen: set[str] = set()
        todo = [a for e in event_ids for a in self._refs(self.events[e]["auth_events"])]
        while todo:
            eid = todo.pop()
            if eid in seen or eid not in self.events:
                continue
            seen.add(eid)
            todo.extend(self._refs(self.events[eid]["auth_events"]))
        return sorted(seen)

    @staticmethod
    def _refs(refs: list[Any]) -> list[str]:
        return [r if isinstance(r, str) else r[0] for r in refs]

    @staticmethod
    def _event_id(pdu: JsonDict, rv: RoomVersion) -> str:
        return pdu["event_id"] if rv.event_format == EventFormat.V1 else Event(pdu, rv).event_id

    def take(self, room: FakeRoom, event_id: str, pdu: JsonDict) -> None:
        """Hold an event of `room` and move our view: it replaces its prev events as a head."""
        self.events[event_id] = pdu
        prevs = set(self._refs(pdu.get("prev_events", [])))
        room.heads = [h for h in room.heads if h not in prevs] + [event_id]
        if isinstance(pdu.get("state_key"), str):
            room.state[(pdu["type"], pdu["state_key"])] = event_id

    # -- client side -----------------------------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            context = ssl.create_default_context(cafile=str(self.cert.ca_path))
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        return self._session

    async def request(self, destination: str, method: str, path: str, body: Any = None, *,
                      query: dict[str, Any] | None = None, authorization: str | None | bool = True,
                      signed_body: Any = None) -> tuple[int, Any]:
        """A request to `destination` (a `localhost:<port>` server), X-Matrix signed by us unless
        `authorization` is False (no header) or a header value of the test's own. `signed_body` signs
        another body than the one sent (a tampered request)."""
        uri = path + ("?" + urlencode(query, doseq=True) if query else "")
        headers: dict[str, str] = {}
        if authorization is True:
            headers["Authorization"] = sign_request(self.server_name, destination, self.key, method, uri,
                                                    body if signed_body is None else signed_body)
        elif isinstance(authorization, str):
            headers["Authorization"] = authorization
        url = URL(f"https://{destination}{uri}", encoded=True)
        async with self._client().request(method, url, json=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    async def join(self, destination: str, room_id: str, localpart: str) -> JsonDict:
        """Join `room_id` on `destination` as `@localpart:us` (make_join, sign, send_join v2); our view
        of the room becomes the returned state plus the join. Returns the join event."""
        user_id = self.user_id(localpart)
        versions = sorted(KNOWN_ROOM_VERSIONS, key=lambda v: (len(v), v))
        status, body = await self.request(destination, "GET",
                                          f"/_matrix/federation/v1/make_join/{q(room_id)}/{q(user_id)}",
                                          query={"ver": versions})
        assert status == 200, body
        rv = KNOWN_ROOM_VERSIONS[body["room_version"]]
        pdu = {k: v for k, v in body["event"].items() if k not in ("signatures", "hashes", "unsigned")}
        pdu["origin_server_ts"] = now_ms()
        if not rv.updated_redaction_rules:
            pdu["origin"] = self.server_name
        event_id = self._finish(pdu, rv)
        status, answer = await self.request(destination, "PUT",
                                            f"/_matrix/federation/v2/send_join/{q(room_id)}/{q(event_id)}", pdu)
        assert status == 200, answer
        room = self.rooms.setdefault(room_id, FakeRoom(room_id, rv))
        for p in answer["auth_chain"] + answer["state"]:
            eid = self._event_id(p, rv)
            self.events[eid] = p
        for p in answer["state"]:
            room.state[(p["type"], p["state_key"])] = self._event_id(p, rv)
        room.heads = []
        self.take(room, event_id, pdu)
        return pdu

    def _finish(self, pdu: JsonDict, rv: RoomVersion) -> str:
        if rv.event_format == EventFormat.V1:
            pdu["event_id"] = f"${uuid.uuid4().hex}:{self.server_name}"
        eid = finish_local_event(pdu, self.server_name, self.key, rv)
        return eid if eid is not None else str(pdu["event_id"])

    def build(self, room_id: str, sender: str, etype: str, content: JsonDict, state_key: str | None = None, *,
              prev_events: list[str] | None = None, state: dict[StateKey, str] | None = None,
              extra: JsonDict | None = None, keep: bool = True) -> tuple[str, JsonDict]:
        """A signed event of ours on our heads (or `prev_events`), its auth events chosen from our view
        of the state (or `state`), with `extra` top-level keys; held (and made our head) when `keep`.
        Returns (event ID, PDU)."""
        room = self.rooms[room_id]
        rv = room.rv
        prevs = prev_events if prev_events is not None else list(room.heads)
        depth = max((self.events[p]["depth"] for p in prevs if p in self.events), default=0) + 1
        auth_keys = auth_types_for_event(rv, etype, sender, state_key, content)
        view = dict(room.state if state is None else state)
        auth_ids = [view[k] for k in sorted(auth_keys) if k in view]
        pdu: JsonDict = {"room_id": room_id, "sender": sender, "type": etype, "content": content, "depth": depth,
                         "prev_events": prevs, "auth_events": auth_ids, "origin_server_ts": now_ms()}
        if rv.event_format == EventFormat.V1:
            pdu["prev_events"] = [[p, {}] for p in prevs]
            pdu["auth_events"] = [[a, {}] for a in auth_ids]
        if state_key is not None:
            pdu["state_key"] = state_key
        if not rv.updated_redaction_rules:
            pdu["origin"] = self.server_name
        pdu.update(extra or {})
        event_id = self._finish(pdu, rv)
        self.state_before[event_id] = view
        if keep:
            self.take(room, event_id, pdu)
        return event_id, pdu

    async def send_transaction(self, destination: str, pdus: list[JsonDict], edus: list[JsonDict] | None = None,
                               txn_id: str | None = None, **kwargs: Any) -> tuple[int, Any]:
        txn_id = txn_id or uuid.uuid4().hex
        body = {"origin": self.server_name, "origin_server_ts": now_ms(), "pdus": pdus, "edus": edus or []}
        return await self.request(destination, "PUT", f"/_matrix/federation/v1/send/{q(txn_id)}", body, **kwargs)
