"""The homeserver -> application service side, over real HTTP on both engines: transactions (events in
rooms with an interested member, in order, stored before sending, re-sent with the same ID after a
failure or a restart, once), MSC2409 ephemeral events and to-device messages, MSC3202 key counts, the
appservice ping, third-party lookups and user/alias queries. The service is a small aiohttp app
recording what it is sent."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from aiohttp import web

from hs.appservice.queries import appservice_queries
from hs.appservice.sender import AppServiceSender, appservice_sender
from tests.harness import Client, TestHomeServer, ok, user
from tests.services import free_port

Json = dict[str, Any]
HS_TOKEN = "hs-token-for-the-bridge"
AS_TOKEN = "as-token-of-the-bridge"


class FakeAppService:
    """An application service on a real port: records transactions and queries, answers as told."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.txns: list[tuple[str, Json]] = []  # acknowledged (txn ID, body), in arrival order
        self.attempts: list[str] = []  # every transaction ID tried, refused ones included
        self.fail_next = 0  # refuse this many transactions with a 500
        self.auth: list[str | None] = []
        self.pings: list[Json] = []
        self.ping_status = 200
        self.ping_delay = 0.0
        self.query_tokens: list[str | None] = []
        self.users: set[str] = set()  # user IDs the service says exist
        self.aliases: set[str] = set()
        self.queries: list[tuple[str, Json]] = []
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        prefix = "/_matrix/app/v1"
        app.router.add_put(prefix + "/transactions/{txn}", self._txn)
        app.router.add_post(prefix + "/ping", self._ping)
        app.router.add_get(prefix + "/users/{user}", self._user)
        app.router.add_get(prefix + "/rooms/{alias}", self._alias)
        app.router.add_get(prefix + "/thirdparty/protocol/{protocol}", self._protocol)
        app.router.add_get(prefix + "/thirdparty/user/{protocol}", self._3pu)
        app.router.add_get(prefix + "/thirdparty/location/{protocol}", self._3pl)
        app.router.add_get(prefix + "/thirdparty/location", self._3pl)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _authorised(self, request: web.Request) -> bool:
        self.auth.append(request.headers.get("Authorization"))
        self.query_tokens.append(request.query.get("access_token"))
        return request.headers.get("Authorization") == f"Bearer {HS_TOKEN}"

    async def _txn(self, request: web.Request) -> web.Response:
        txn_id = request.match_info["txn"]
        self.attempts.append(txn_id)
        if not self._authorised(request):
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response({"errcode": "M_UNKNOWN"}, status=500)
        body = await request.json()
        if all(t != txn_id for t, _b in self.txns):  # a repeat is acknowledged, not taken twice
            self.txns.append((txn_id, body))
        return web.json_response({})

    async def _ping(self, request: web.Request) -> web.Response:
        self._authorised(request)
        self.pings.append(await request.json())
        await asyncio.sleep(self.ping_delay)
        if self.ping_status != 200:
            return web.json_response({"errcode": "M_UNKNOWN_TOKEN"}, status=self.ping_status)
        return web.json_response({})

    async def _user(self, request: web.Request) -> web.Response:
        self.queries.append(("user", {"id": request.match_info["user"]}))
        return web.json_response({}, status=200 if request.match_info["user"] in self.users else 404)

    async def _alias(self, request: web.Request) -> web.Response:
        self.queries.append(("alias", {"id": request.match_info["alias"]}))
        return web.json_response({}, status=200 if request.match_info["alias"] in self.aliases else 404)

    async def _protocol(self, request: web.Request) -> web.Response:
        p = request.match_info["protocol"]
        return web.json_response({"user_fields": ["nick"], "location_fields": ["channel"], "icon": "mxc://x/y",
                                  "field_types": {}, "instances": [{"desc": "Net", "network_id": "net1",
                                                                    "fields": {}, "icon": "mxc://x/z"}],
                                  "protocol_name": p})

    async def _3pu(self, request: web.Request) -> web.Response:
        fields = dict(request.query)
        self.queries.append(("3pu", fields))
        return web.json_response([{"userid": f"@irc_{fields.get('nick')}:test.local", "protocol": "irc",
                                   "fields": fields}, {"invalid": True}])

    async def _3pl(self, request: web.Request) -> web.Response:
        fields = dict(request.query)
        self.queries.append(("3pl", fields))
        return web.json_response([{"alias": "#irc_chan:test.local", "protocol": "irc", "fields": fields}])

    # -- what it received ----------------------------------------------------------------------------------
    def events(self) -> list[Json]:
        return [e for _t, body in self.txns for e in body["events"]]

    def ephemeral(self) -> list[Json]:
        return [e for _t, body in self.txns for e in body.get("ephemeral", [])]


def registration(tmp_path: Path, url: str | None, **extra: Any) -> str:
    data: Json = {"id": "bridge", "url": url, "as_token": AS_TOKEN, "hs_token": HS_TOKEN,
                  "sender_localpart": "bridgebot", "protocols": ["irc"],
                  "namespaces": {"users": [{"regex": "@irc_.*:test\\.local", "exclusive": False}],
                                 "aliases": [{"regex": "#irc_.*:test\\.local", "exclusive": False}], "rooms": []}}
    data.update(extra)
    path = tmp_path / f"{data['id']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AppServiceSender, "BACKOFF_BASE_S", 0.05)
    monkeypatch.setattr(AppServiceSender, "MAX_BACKOFF_S", 0.4)


async def setup(make_server: Any, engine: str, tmp_path: Path, *, start_service: bool = True,
                **extra: Any) -> tuple[TestHomeServer, FakeAppService]:
    service = FakeAppService()
    if start_service:
        await service.start()
    server = await make_server(engine, app_service_config_files=[registration(tmp_path, service.url, **extra)])
    return server, service


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def bridged_room(server: TestHomeServer) -> tuple[Client, Client, str]:
    """alice's room with irc_bob (a user of the bridge's namespace) joined."""
    alice = await user(server, "alice")
    bob = await user(server, "irc_bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    return alice, bob, room


def texts(events: list[Json]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


async def test_events_of_rooms_with_an_interested_member(make_server: Any, engine: str, tmp_path: Path) -> None:
    server, service = await setup(make_server, engine, tmp_path)
    alice, bob, room = await bridged_room(server)
    other = await alice.create_room(preset="public_chat")  # nobody of the bridge's there
    await alice.send_message(other, "not for the bridge")
    for i in range(3):
        await alice.send_message(room, f"m{i}")
    await until(lambda: texts(service.events()) == ["m0", "m1", "m2"])
    events = service.events()
    assert all(e["room_id"] == room for e in events)
    joins = [e for e in events if e["type"] == "m.room.member" and e["state_key"] == bob.user_id]
    assert joins and joins[0]["content"]["membership"] == "join"
    message = [e for e in events if e["type"] == "m.room.message"][0]
    assert message["sender"] == alice.user_id and "unsigned" in message and "event_id" in message
    assert set(service.auth) == {f"Bearer {HS_TOKEN}"}
    ids = [int(t) for t, _b in service.txns]
    assert ids == sorted(set(ids))
    # Events sent by a namespaced user in a room without other bridge members still reach the service.
    solo = await bob.create_room()
    await bob.send_message(solo, "from the bridge's user")
    await until(lambda: "from the bridge's user" in texts(service.events()))


async def test_outage_then_every_event_once_in_order(make_server: Any, engine: str, tmp_path: Path,
                                                      fast_backoff: None) -> None:
    server, service = await setup(make_server, engine, tmp_path)
    alice, _bob, room = await bridged_room(server)
    await until(lambda: len(service.events()) >= 1)
    await service.stop()
    sent = [f"msg {i}" for i in range(20)]
    for text in sent:
        await alice.send_message(room, text)
    await asyncio.sleep(0.5)  # a few failed attempts, backing off
    sender = appservice_sender(server.hs)
    assert sender.status()["bridge"]["failures"] >= 1
    await service.start()
    await until(lambda: texts(service.events()) == sent)
    event_ids = [e["event_id"] for e in service.events()]
    assert len(event_ids) == len(set(event_ids))
    await until(lambda: sender.status()["bridge"]["failures"] == 0)


async def test_a_stored_transaction_is_resent_with_its_id_after_a_restart(make_server: Any, engine: str,
                                                                          tmp_path: Path, fast_backoff: None) -> None:
    server, service = await setup(make_server, engine, tmp_path)
    alice, _bob, room = await bridged_room(server)
    await until(lambda: len(service.events()) >= 1)
    service.fail_next = 10_000
    await alice.send_message(room, "before the restart")
    await until(lambda: len(service.attempts) >= len(service.txns) + 1)
    refused = service.attempts[-1]
    await server.restart()
    service.fail_next = 0
    await until(lambda: "before the restart" in texts(service.events()))
    assert service.txns[-1][0] == refused  # the same transaction, its ID unchanged
    await alice.send_message(room, "after the restart")
    await until(lambda: texts(service.events())[-1:] == ["after the restart"])
    assert texts(service.events()).count("before the restart") == 1
    assert int(service.txns[-1][0]) > int(refused)


async def test_transactions_hold_at_most_100_events(make_server: Any, engine: str, tmp_path: Path,
                                                    fast_backoff: None) -> None:
    server, service = await setup(make_server, engine, tmp_path)
    alice, _bob, room = await bridged_room(server)
    await until(lambda: len(service.events()) >= 1)
    await service.stop()
    sent = [f"n{i}" for i in range(130)]
    for text in sent:
        await alice.send_message(room, text)
    await service.start()
    await until(lambda: texts(service.events()) == sent, timeout=30)
    assert max(len(body["events"]) for _t, body in service.txns) == 100


async def test_ephemeral_events_and_to_device(make_server: Any, engine: str, tmp_path: Path) -> None:
    server, service = await setup(make_server, engine, tmp_path, receive_ephemeral=True)
    alice, bob, room = await bridged_room(server)
    event_id = await alice.send_message(room, "read me")
    await ok(alice, "PUT", f"/rooms/{room}/typing/{quote(alice.user_id or '')}", {"typing": True, "timeout": 30000})
    await ok(alice, "POST", f"/rooms/{room}/receipt/m.read/{event_id}", {})
    await ok(alice, "POST", f"/rooms/{room}/receipt/m.read.private/{event_id}", {})

    def typing() -> list[Json]:
        return [e for e in service.ephemeral() if e["type"] == "m.typing"]

    def receipts() -> list[Json]:
        return [e for e in service.ephemeral() if e["type"] == "m.receipt"]

    await until(lambda: any(alice.user_id in e["content"]["user_ids"] for e in typing()))
    await until(lambda: bool(receipts()))
    assert typing()[0]["room_id"] == room
    content = receipts()[0]["content"]
    assert alice.user_id in content[event_id]["m.read"]
    assert all("m.read.private" not in r["content"].get(event_id, {}) for r in receipts())
    body = next(b for _t, b in service.txns if b.get("ephemeral"))
    assert body["de.sorunome.msc2409.ephemeral"] == body["ephemeral"]
    # To-device messages for the bridge's users' devices.
    await ok(alice, "PUT", "/sendToDevice/m.test/t1", {"messages": {bob.user_id: {bob.device_id: {"x": 1}}}})

    def to_device() -> list[Json]:
        return [m for _t, b in service.txns for m in b.get("de.sorunome.msc2409.to_device", [])]

    await until(lambda: bool(to_device()))
    assert to_device()[0] == {"type": "m.test", "sender": alice.user_id, "to_user_id": bob.user_id,
                              "to_device_id": bob.device_id, "content": {"x": 1}}


async def test_msc3202_key_counts_and_device_lists(make_server: Any, engine: str, tmp_path: Path) -> None:
    server, service = await setup(make_server, engine, tmp_path, **{"org.matrix.msc3202": True})
    alice, bob, room = await bridged_room(server)
    keys = {f"signed_curve25519:K{i}": {"key": f"k{i}", "signatures": {}} for i in range(3)}
    await ok(bob, "POST", "/keys/upload", {"one_time_keys": keys})
    await ok(alice, "POST", "/keys/upload", {"device_keys": {
        "user_id": alice.user_id, "device_id": alice.device_id, "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {f"ed25519:{alice.device_id}": "x", f"curve25519:{alice.device_id}": "y"}, "signatures": {}}})
    await alice.send_message(room, "with counts")
    await until(lambda: "with counts" in texts(service.events()))
    body = next(b for _t, b in reversed(service.txns) if "with counts" in texts(b["events"]))
    counts = body["org.matrix.msc3202.device_one_time_keys_count"]
    assert counts[bob.user_id][bob.device_id]["signed_curve25519"] == 3
    assert body["org.matrix.msc3202.device_one_time_key_counts"] == counts

    def changed() -> set[str]:
        return {u for _t, b in service.txns for u in b.get("org.matrix.msc3202.device_lists", {}).get("changed", [])}

    await until(lambda: alice.user_id in changed())


async def test_ping(make_server: Any, engine: str, tmp_path: Path) -> None:
    server, service = await setup(make_server, engine, tmp_path)
    bridge = server.client()
    bridge.token = AS_TOKEN
    path = "/_matrix/client/v1/appservice/bridge/ping"
    status, body = await bridge.request("POST", path, {"transaction_id": "meow"})
    assert status == 200 and isinstance(body["duration_ms"], int), body
    assert service.pings == [{"transaction_id": "meow"}]
    status, body = await bridge.request("POST", "/_matrix/client/v1/appservice/other/ping", {})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    alice = await user(server, "alice")
    status, body = await alice.request("POST", path, {})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await server.client().request("POST", path, {})
    assert status == 401
    service.ping_status = 401
    status, body = await bridge.request("POST", path, {})
    assert (status, body["errcode"], body["status"]) == (502, "M_BAD_STATUS", 401)
    assert "M_UNKNOWN_TOKEN" in body["body"]
    await service.stop()
    status, body = await bridge.request("POST", path, {})
    assert (status, body["errcode"]) == (502, "M_CONNECTION_FAILED")
    status, body = await bridge.request("POST", path, {"transaction_id": 5})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")


async def test_ping_timeout(make_server: Any, engine: str, tmp_path: Path) -> None:
    server, service = await setup(make_server, engine, tmp_path)
    appservice_queries(server.hs).api.timeout_s = 0.2
    service.ping_delay = 1.0
    bridge = server.client()
    bridge.token = AS_TOKEN
    status, body = await bridge.request("POST", "/_matrix/client/v1/appservice/bridge/ping", {})
    assert (status, body["errcode"]) == (504, "M_CONNECTION_TIMEOUT")


async def test_legacy_authorization_adds_the_query_token() -> None:
    from hs.appservice.api import AppServiceApi
    from hs.appservice.registration import parse_registration

    service = FakeAppService()
    await service.start()
    try:
        reg = parse_registration(yaml.safe_load(Path(registration(Path(tempfile.mkdtemp()), service.url)).read_text()),
                                 "test.local")
        plain, legacy = AppServiceApi(), AppServiceApi(legacy_auth=True)
        assert await plain.push(reg, 1, {"events": []})
        assert await legacy.push(reg, 2, {"events": []})
        assert service.query_tokens == [None, HS_TOKEN]
        assert set(service.auth) == {f"Bearer {HS_TOKEN}"}
        await plain.close()
        await legacy.close()
    finally:
        await service.stop()


async def test_ping_without_url(make_server: Any, engine: str, tmp_path: Path) -> None:
    server = await make_server(engine, app_service_config_files=[registration(tmp_path, None)])
    bridge = server.client()
    bridge.token = AS_TOKEN
    status, body = await bridge.request("POST", "/_matrix/client/v1/appservice/bridge/ping", {})
    assert (status, body["errcode"]) == (400, "M_URL_NOT_SET")


async def test_a_successful_ping_ends_the_backoff(make_server: Any, engine: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AppServiceSender, "BACKOFF_BASE_S", 30.0)
    server, service = await setup(make_server, engine, tmp_path)
    alice, _bob, room = await bridged_room(server)
    await until(lambda: len(service.events()) >= 1)
    service.fail_next = 1
    await alice.send_message(room, "held back")
    sender = appservice_sender(server.hs)
    await until(lambda: sender.status()["bridge"]["failures"] == 1)
    bridge = server.client()
    bridge.token = AS_TOKEN
    await ok(bridge, "POST", "/_matrix/client/v1/appservice/bridge/ping", {})
    await until(lambda: "held back" in texts(service.events()), timeout=5)


async def test_thirdparty_lookups(make_server: Any, engine: str, tmp_path: Path) -> None:
    server, service = await setup(make_server, engine, tmp_path)
    alice = await user(server, "alice")
    protocols = await ok(alice, "GET", "/thirdparty/protocols")
    assert list(protocols) == ["irc"]
    assert protocols["irc"]["instances"][0]["instance_id"] == "bridge|net1"
    assert (await ok(alice, "GET", "/thirdparty/protocol/irc"))["user_fields"] == ["nick"]
    status, body = await alice.request("GET", "/thirdparty/protocol/xmpp")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    users = await ok(alice, "GET", "/thirdparty/user/irc", nick="bob")
    assert users == [{"userid": "@irc_bob:test.local", "protocol": "irc", "fields": {"nick": "bob"}}]
    assert ("3pu", {"nick": "bob"}) in service.queries  # the client's token is not passed on
    locations = await ok(alice, "GET", "/thirdparty/location/irc", channel="#chan")
    assert locations[0]["alias"] == "#irc_chan:test.local"
    assert await ok(alice, "GET", "/thirdparty/user/xmpp", nick="bob") == []
    assert (await ok(alice, "GET", "/thirdparty/location", alias="#irc_chan:test.local"))[0]["protocol"] == "irc"


async def test_user_and_alias_queries(make_server: Any, engine: str, tmp_path: Path) -> None:
    server, service = await setup(make_server, engine, tmp_path)
    queries = appservice_queries(server.hs)
    service.users.add("@irc_carol:test.local")
    service.aliases.add("#irc_room:test.local")
    assert await queries.query_user("@irc_carol:test.local")
    assert not await queries.query_user("@irc_dave:test.local")
    assert not await queries.query_user("@someone:test.local")  # outside the namespace: not asked
    assert await queries.query_alias("#irc_room:test.local")
    assert not await queries.query_alias("#other:test.local")
    asked = [q[1]["id"] for q in service.queries]
    assert asked == ["@irc_carol:test.local", "@irc_dave:test.local", "#irc_room:test.local"]
