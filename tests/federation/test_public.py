"""What servers show each other of their rooms, against a real Synapse and against a second hs: the
published room directory (`/publicRooms?server=`, both ways, with filters and pages), refused when
`allow_public_rooms_over_federation` is off; space hierarchies whose child rooms live on the other
server; the event nearest a time in a room joined after it; OpenID userinfo.

The session's Synapse publishes no rooms (its default `room_list_publication_rules` deny everyone),
so tests of hs reading a Synapse directory use a Synapse of this module that allows publishing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.federation.client import MatrixServer, TlsClient, unique, user
from tests.federation.cluster_conftest_helpers import run_coroutine
from tests.federation.conftest import RUNNING, MakeFedHs
from tests.federation.fake_remote import FakeRemote
from tests.federation.synapse import SynapseServer, create_synapse_database
from tests.federation.tls import TestCA
from tests.services import drop_database


@pytest.fixture(scope="module")
def publishing_synapse(synapse_python: Any, federation_ca: TestCA, pg_base_dsn: str,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    """A Synapse whose users may publish rooms to its directory (for this module's tests only)."""
    data_dir = tmp_path_factory.mktemp("synapse-publishing")
    dsn = run_coroutine(create_synapse_database(pg_base_dsn))
    server = SynapseServer(synapse_python, data_dir, dsn, federation_ca.issue(data_dir / "tls"),
                           {"room_list_publication_rules": [{"action": "allow"}]})
    try:
        server.start()
        RUNNING["publishing synapse"] = server
        yield server
    finally:
        RUNNING.pop("publishing synapse", None)
        server.stop()
        run_coroutine(drop_database(dsn))


@pytest.fixture(params=["synapse", "hs"])
async def publishing_remote(request: pytest.FixtureRequest, make_fed_hs: MakeFedHs) -> MatrixServer:
    """`remote_server`, with a Synapse that lets its users publish rooms."""
    if request.param == "synapse":
        server: MatrixServer = request.getfixturevalue("publishing_synapse")
        return server
    return await make_fed_hs()


async def publish(client: TlsClient, name: str, **extra: Any) -> str:
    return await client.create_room(preset="public_chat", visibility="public", name=name, **extra)


def room_ids(body: dict[str, Any]) -> list[str]:
    return [r["room_id"] for r in body["chunk"]]


# -- the published room directory ------------------------------------------------------------------------
async def test_remote_server_reads_the_hs_directory(make_fed_hs: MakeFedHs, remote_server: MatrixServer) -> None:
    """A remote user lists hs's directory (GET, then paged, then filtered POST); rooms created with
    m.federate false and unpublished rooms are not in it."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    term = unique("dir")
    first = await publish(alice, f"{term} first", topic="listed over federation")
    second = await publish(alice, f"{term} second")
    local_only = await publish(alice, f"{term} local only", creation_content={"m.federate": False})
    unpublished = await alice.create_room(preset="public_chat", name=f"{term} unpublished")
    status, listed = await bob.request("GET", "/publicRooms", params={"server": local.server_name})
    assert status == 200, (listed, remote_server.log_tail(30))
    assert sorted(room_ids(listed)) == sorted([first, second]), listed
    entry = next(r for r in listed["chunk"] if r["room_id"] == first)
    assert entry["name"] == f"{term} first" and entry["topic"] == "listed over federation"
    assert entry["num_joined_members"] == 1 and entry["join_rule"] == "public"
    assert local_only not in room_ids(listed) and unpublished not in room_ids(listed)
    # One room a page: the token the remote server hands back is ours, passed through.
    status, page1 = await bob.request("GET", "/publicRooms", params={"server": local.server_name, "limit": "1"})
    assert status == 200 and len(page1["chunk"]) == 1 and "next_batch" in page1, page1
    status, page2 = await bob.request("GET", "/publicRooms", params={
        "server": local.server_name, "limit": "1", "since": page1["next_batch"]})
    assert status == 200, page2
    assert sorted(room_ids(page1) + room_ids(page2)) == sorted([first, second])
    status, found = await bob.request("POST", "/publicRooms", {"filter": {"generic_search_term": f"{term} SECOND"}},
                                      params={"server": local.server_name})
    assert status == 200, (found, remote_server.log_tail(30))
    assert room_ids(found) == [second]


async def test_hs_reads_a_remote_directory(make_fed_hs: MakeFedHs, publishing_remote: MatrixServer) -> None:
    """An hs user lists another server's directory: all of it, filtered by a term, and by room type."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(publishing_remote, unique("bob"))
    term = unique("remote-dir")
    room = await publish(bob, f"{term} room", topic="over there")
    space = await publish(bob, f"{term} space", creation_content={"type": "m.space"})
    status, listed = await alice.request("GET", "/publicRooms", params={"server": publishing_remote.server_name})
    assert status == 200, (listed, local.log_tail(30))
    assert {room, space} <= set(room_ids(listed)), listed
    entry = next(r for r in listed["chunk"] if r["room_id"] == room)
    assert entry["name"] == f"{term} room" and entry["topic"] == "over there"
    status, found = await alice.request("POST", "/publicRooms", {"filter": {"generic_search_term": term}},
                                        params={"server": publishing_remote.server_name})
    assert status == 200, (found, local.log_tail(30))
    assert sorted(room_ids(found)) == sorted([room, space])
    status, spaces = await alice.request("POST", "/publicRooms", {
        "filter": {"generic_search_term": term, "room_types": ["m.space"]}},
        params={"server": publishing_remote.server_name})
    assert status == 200 and room_ids(spaces) == [space], spaces
    status, nothing = await alice.request("POST", "/publicRooms", {"filter": {"generic_search_term": unique("none")}},
                                          params={"server": publishing_remote.server_name})
    assert status == 200 and nothing["chunk"] == [], nothing
    # A remote directory is only fetched for a signed-in user.
    status, body = await local.client().request("GET", "/publicRooms", params={"server": publishing_remote.server_name})
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN", body


async def test_hs_directory_refused_over_federation_when_not_allowed(make_fed_hs: MakeFedHs,
                                                                     remote_server: MatrixServer) -> None:
    """With allow_public_rooms_over_federation off (the default), other servers get 403 M_FORBIDDEN,
    which Synapse hands its client as 403 for a filtered request and as 502 for a plain one."""
    local = await make_fed_hs(allow_public_rooms_over_federation=False)
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    await publish(alice, unique("hidden"))
    status, body = await bob.request("POST", "/publicRooms", {"filter": {"generic_search_term": "hidden"}},
                                     params={"server": local.server_name})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    status, body = await bob.request("GET", "/publicRooms", params={"server": local.server_name})
    assert status in (403, 502), body
    # hs's own users still see it.
    status, body = await alice.request("GET", "/publicRooms")
    assert status == 200 and len(body["chunk"]) == 1, body



class PlainDirectoryServer(FakeRemote):
    """A fake server that serves its directory by GET only (no filtered POST, like servers before
    MSC2197), or refuses it, or answers nonsense, as a test sets `mode`."""

    listed: list[dict[str, Any]] = []
    mode = "ok"

    async def _unknown(self, request: web.Request) -> web.Response:
        if request.method == "GET" and request.path == "/_matrix/federation/v1/publicRooms":
            if self.mode == "refuse":
                return self._error(403, "M_FORBIDDEN", "no directory for you")
            if self.mode == "nonsense":
                return web.json_response({"chunk": "rooms"})
            return web.json_response({"chunk": self.listed, "total_room_count_estimate": len(self.listed)})
        return await super()._unknown(request)


async def test_hs_filters_a_directory_the_remote_cannot_filter(make_fed_hs: MakeFedHs, federation_ca: TestCA,
                                                                tmp_path: Path) -> None:
    """A server without the filtered POST (404 M_UNRECOGNIZED) is asked for its whole list, filtered
    here; its refusal reaches the client as 403, a malformed answer as 502."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    fake = PlainDirectoryServer(federation_ca, tmp_path)
    fake.listed = [
        {"room_id": "!a:fake", "name": "Apples", "num_joined_members": 3, "world_readable": False,
         "guest_can_join": False, "join_rule": "public"},
        {"room_id": "!b:fake", "name": "Bananas", "topic": "and apples", "num_joined_members": 1,
         "world_readable": True, "guest_can_join": False, "join_rule": "public", "room_type": "m.space"},
        {"room_id": "!c:fake", "name": "Cherries", "num_joined_members": 1, "world_readable": False,
         "guest_can_join": False, "join_rule": "public"},
        {"name": "no room ID: left out"},
    ]
    await fake.start()
    try:
        status, body = await alice.request("GET", "/publicRooms", params={"server": fake.server_name})
        assert status == 200 and room_ids(body) == ["!a:fake", "!b:fake", "!c:fake"], body
        status, body = await alice.request("POST", "/publicRooms", {"limit": 1, "filter": {"generic_search_term": "APPLE"}},
                                           params={"server": fake.server_name})
        assert status == 200 and room_ids(body) == ["!a:fake", "!b:fake"], body
        assert fake.requests[-2:] == ["POST /_matrix/federation/v1/publicRooms", "GET /_matrix/federation/v1/publicRooms"]
        status, body = await alice.request("POST", "/publicRooms", {"filter": {"room_types": [None]}},
                                           params={"server": fake.server_name})
        assert status == 200 and room_ids(body) == ["!a:fake", "!c:fake"], body
        fake.mode = "refuse"
        status, body = await alice.request("GET", "/publicRooms", params={"server": fake.server_name})
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
        fake.mode = "nonsense"
        status, body = await alice.request("GET", "/publicRooms", params={"server": fake.server_name})
        assert status == 502, body
    finally:
        await fake.stop()
    status, body = await alice.request("GET", "/publicRooms", params={"server": "not a server name"})
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body


# -- OpenID --------------------------------------------------------------------------------------------
async def test_openid_userinfo_on_hs_and_remote(make_fed_hs: MakeFedHs, remote_server: MatrixServer) -> None:
    """A token requested on each server is exchanged for the user ID on that server's userinfo
    (unauthenticated, over https); both answer the same shape, and both refuse an unknown token."""
    local = await make_fed_hs()
    answers = []
    for server in (local, remote_server):
        client = await user(server, unique("oidc"))
        status, token = await client.request("POST", f"/user/{client.user_id}/openid/request_token", {})
        assert status == 200, token
        assert token["token_type"] == "Bearer" and token["matrix_server_name"] == server.server_name
        assert token["expires_in"] == 3600 and isinstance(token["access_token"], str)
        anonymous = server.client()
        status, info = await anonymous.request("GET", "/_matrix/federation/v1/openid/userinfo",
                                               params={"access_token": token["access_token"]})
        assert status == 200, info
        answers.append(info)
        assert info == {"sub": client.user_id}
        status, refused = await anonymous.request("GET", "/_matrix/federation/v1/openid/userinfo",
                                                  params={"access_token": "not-a-token"})
        assert status == 401 and refused["errcode"] == "M_UNKNOWN_TOKEN", refused
    assert set(answers[0]) == set(answers[1]) == {"sub"}


# -- space hierarchies ---------------------------------------------------------------------------------
async def add_child(owner: TlsClient, space: str, child: str, via: str, **content: Any) -> None:
    status, body = await owner.request("PUT", f"/rooms/{space}/state/m.space.child/{child}",
                                       {"via": [via], **content})
    assert status == 200, body


async def build_space(owner: TlsClient, server_name: str) -> dict[str, str]:
    """A public space with a suggested public room, an invite-only room and a public sub-space (first
    by its `order`) holding one more public room."""
    rooms = {
        "space": await owner.create_room(preset="public_chat", name="space",
                                         creation_content={"type": "m.space"}),
        "public": await owner.create_room(preset="public_chat", name="public child", topic="come in"),
        "private": await owner.create_room(preset="private_chat", name="private child"),
        "subspace": await owner.create_room(preset="public_chat", name="sub-space",
                                            creation_content={"type": "m.space"}),
        "grandchild": await owner.create_room(preset="public_chat", name="grandchild"),
    }
    await add_child(owner, rooms["space"], rooms["public"], server_name, suggested=True)
    await add_child(owner, rooms["space"], rooms["private"], server_name)
    await add_child(owner, rooms["space"], rooms["subspace"], server_name, order="a")
    await add_child(owner, rooms["subspace"], rooms["grandchild"], server_name)
    return rooms


async def check_hierarchy_across(viewer: TlsClient, rooms: dict[str, str], viewers_server: MatrixServer) -> None:
    """The viewer, joined to the space only, sees every room but the private one; with
    suggested_only the space and its suggested child."""
    path = f"/_matrix/client/v1/rooms/{rooms['space']}/hierarchy"
    status, body = await viewer.request("GET", path)
    assert status == 200, (body, viewers_server.log_tail(30))
    seen = [r["room_id"] for r in body["rooms"]]
    assert seen[0] == rooms["space"], seen
    assert sorted(seen) == sorted([rooms["space"], rooms["subspace"], rooms["grandchild"], rooms["public"]]), (
        seen, viewers_server.log_tail(30))
    by_id = {r["room_id"]: r for r in body["rooms"]}
    assert by_id[rooms["public"]]["name"] == "public child" and by_id[rooms["public"]]["topic"] == "come in"
    assert by_id[rooms["public"]]["join_rule"] == "public" and by_id[rooms["public"]]["num_joined_members"] == 1
    assert by_id[rooms["subspace"]]["room_type"] == "m.space"
    assert [c["state_key"] for c in by_id[rooms["subspace"]]["children_state"]] == [rooms["grandchild"]]
    assert len(by_id[rooms["space"]]["children_state"]) == 3
    assert "allowed_room_ids" not in by_id[rooms["public"]]
    status, body = await viewer.request("GET", path, params={"suggested_only": "true"})
    assert status == 200, body
    assert [r["room_id"] for r in body["rooms"]] == [rooms["space"], rooms["public"]], body


async def test_remote_server_walks_a_space_on_hs(make_fed_hs: MakeFedHs, remote_server: MatrixServer) -> None:
    """A remote user joined to an hs space gets its hierarchy: the child rooms, which only hs is in,
    described by hs's federation /hierarchy (the private one refused)."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    rooms = await build_space(alice, local.server_name)
    status, body = await bob.request("POST", f"/join/{rooms['space']}", {}, params={"server_name": local.server_name})
    assert status == 200, body
    await check_hierarchy_across(bob, rooms, remote_server)


async def test_hs_walks_a_space_on_the_remote_server(make_fed_hs: MakeFedHs, remote_server: MatrixServer) -> None:
    """The other way: an hs user joined to a remote space gets the remote child rooms through the
    remote server's federation /hierarchy."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    rooms = await build_space(bob, remote_server.server_name)
    status, body = await alice.request("POST", f"/join/{rooms['space']}", {},
                                       params={"server_name": remote_server.server_name})
    assert status == 200, body
    await check_hierarchy_across(alice, rooms, local)


async def test_federation_hierarchy_answer(make_fed_hs: MakeFedHs) -> None:
    """hs's /hierarchy answer as another hs gets it: the room with its children_state, accessible
    children with their summaries, closed ones named; a closed room itself is 404, until a user of
    the asking server is invited."""
    local, other = await make_fed_hs(), await make_fed_hs()
    alice = await user(local, unique("alice"))
    rooms = await build_space(alice, local.server_name)
    client = other.hs.federation_client

    def path(room: str) -> str:
        return f"/_matrix/federation/v1/hierarchy/{room}"

    body = await client.get_json(local.server_name, path(rooms["space"]))
    assert body["room"]["room_id"] == rooms["space"] and body["room"]["room_version"]
    assert {c["state_key"] for c in body["room"]["children_state"]} == {
        rooms["public"], rooms["private"], rooms["subspace"]}
    assert sorted(c["room_id"] for c in body["children"]) == sorted([rooms["public"], rooms["subspace"]])
    sub = next(c for c in body["children"] if c["room_id"] == rooms["subspace"])
    assert [c["state_key"] for c in sub["children_state"]] == [rooms["grandchild"]]
    assert body["inaccessible_children"] == [rooms["private"]]
    suggested = await client.get_json(local.server_name, path(rooms["space"]), {"suggested_only": "true"})
    assert [c["room_id"] for c in suggested["children"]] == [rooms["public"]]
    from hs.federation.client import FederationError

    with pytest.raises(FederationError) as refused:
        await client.get_json(local.server_name, path(rooms["private"]))
    assert refused.value.status == 404 and refused.value.errcode == "M_NOT_FOUND"
    carol = await user(other, unique("carol"))
    status, invited = await alice.request("POST", f"/rooms/{rooms['private']}/invite", {"user_id": carol.user_id})
    assert status == 200, invited
    answer = await client.get_json(local.server_name, path(rooms["private"]))
    assert answer["room"]["name"] == "private child" and answer["room"]["join_rule"] == "invite"



async def test_hierarchy_child_no_server_describes_is_left_out(make_fed_hs: MakeFedHs) -> None:
    """A child room this server is not in, whose via servers cannot be reached or do not know it, is
    left out of the client's hierarchy (the rest is still answered)."""
    local, other = await make_fed_hs(), await make_fed_hs()
    alice = await user(local, unique("alice"))
    space = await alice.create_room(preset="public_chat", creation_content={"type": "m.space"})
    room = await alice.create_room(preset="public_chat")
    await add_child(alice, space, room, local.server_name)
    await add_child(alice, space, "!nowhere:localhost", "localhost:1")  # nothing listens there
    await add_child(alice, space, "!unknown:localhost", other.server_name)  # 404 there
    status, body = await alice.request("GET", f"/_matrix/client/v1/rooms/{space}/hierarchy")
    assert status == 200, body
    assert [r["room_id"] for r in body["rooms"]] == [space, room], body
    assert len(body["rooms"][0]["children_state"]) == 3


# -- timestamp_to_event --------------------------------------------------------------------------------
async def event_ts(client: TlsClient, room_id: str, event_id: str) -> int:
    status, event = await client.request("GET", f"/rooms/{room_id}/event/{event_id}")
    assert status == 200, event
    return int(event["origin_server_ts"])


async def sent_then_joined(owner: TlsClient, owner_server: MatrixServer, joiner: TlsClient) -> tuple[str, str, int]:
    """(room, the last message before the joiner came, its timestamp): the joiner's server holds no
    timeline event from before its join."""
    room_id = await owner.create_room(preset="public_chat")
    await owner.send_message(room_id, "early")
    last = await owner.send_message(room_id, "last before the join")
    ts = await event_ts(owner, room_id, last)
    await asyncio.sleep(0.05)  # the join's timestamp is later than the messages' (a ms clock)
    status, body = await joiner.request("POST", f"/join/{room_id}", {}, params={"server_name": owner_server.server_name})
    assert status == 200, body
    return room_id, last, ts


async def test_remote_server_finds_an_event_before_its_join_on_hs(make_fed_hs: MakeFedHs,
                                                                   remote_server: MatrixServer) -> None:
    """A remote user asks for the event before a time their server has no history of: it asks hs."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id, last, ts = await sent_then_joined(alice, local, bob)
    status, body = await bob.request("GET", f"/_matrix/client/v1/rooms/{room_id}/timestamp_to_event",
                                     params={"ts": str(ts + 1), "dir": "b"})
    assert status == 200, (body, remote_server.log_tail(30))
    assert body == {"event_id": last, "origin_server_ts": ts}


async def test_hs_finds_an_event_before_its_join_on_the_remote_server(make_fed_hs: MakeFedHs,
                                                                       remote_server: MatrixServer) -> None:
    """The other way: hs has nothing before its join, so it asks the remote server."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id, last, ts = await sent_then_joined(bob, remote_server, alice)
    status, body = await alice.request("GET", f"/_matrix/client/v1/rooms/{room_id}/timestamp_to_event",
                                       params={"ts": str(ts + 1), "dir": "b"})
    assert status == 200, (body, local.log_tail(30))
    assert body == {"event_id": last, "origin_server_ts": ts}
    # Found here when hs has it: its own user's join, after the messages.
    status, body = await alice.request("GET", f"/_matrix/client/v1/rooms/{room_id}/timestamp_to_event",
                                       params={"ts": str(ts + 1), "dir": "f"})
    assert status == 200 and body["event_id"] != last, body


async def test_federation_timestamp_to_event_answer(make_fed_hs: MakeFedHs) -> None:
    """hs's answer to another hs: the nearest event either way for a room that server is in or that is
    world-readable; 403 for a room it may not read; 404 past the room's last event."""
    local, other = await make_fed_hs(), await make_fed_hs()
    alice = await user(local, unique("alice"))
    room_id = await alice.create_room(preset="private_chat", initial_state=[
        {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "world_readable"}}])
    message = await alice.send_message(room_id, "hello")
    ts = await event_ts(alice, room_id, message)
    client = other.hs.federation_client
    path = f"/_matrix/federation/v1/timestamp_to_event/{room_id}"
    assert await client.get_json(local.server_name, path, {"ts": str(ts), "dir": "b"}) == {
        "event_id": message, "origin_server_ts": ts}
    first = await client.get_json(local.server_name, path, {"ts": "0", "dir": "f"})
    status, create = await alice.request("GET", f"/rooms/{room_id}/state/m.room.create", params={"format": "event"})
    assert status == 200 and first["event_id"] == create["event_id"], (first, create)
    from hs.federation.client import FederationError

    with pytest.raises(FederationError) as after:
        await client.get_json(local.server_name, path, {"ts": str(ts + 1000), "dir": "f"})
    assert after.value.status == 404 and after.value.errcode == "M_NOT_FOUND"
    closed = await alice.create_room(preset="private_chat")
    with pytest.raises(FederationError) as refused:
        await client.get_json(local.server_name, f"/_matrix/federation/v1/timestamp_to_event/{closed}",
                              {"ts": "0", "dir": "f"})
    assert refused.value.status == 403 and refused.value.errcode == "M_FORBIDDEN"
