"""What servers show each other of their rooms, against a real Synapse and against a second hs: the
published room directory (`/publicRooms?server=`, both ways, with filters and pages), refused when
`allow_public_rooms_over_federation` is off; space hierarchies whose child rooms live on the other
server; the event nearest a time in a room joined after it; OpenID userinfo.

The session's Synapse publishes no rooms (its default `room_list_publication_rules` deny everyone),
so tests of hs reading a Synapse directory use a Synapse of this module that allows publishing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.federation.client import MatrixServer, TlsClient, unique, user
from tests.federation.conftest import RUNNING, MakeFedHs, _run_coroutine
from tests.federation.synapse import SynapseServer, create_synapse_database
from tests.federation.tls import TestCA
from tests.services import drop_database


@pytest.fixture(scope="module")
def publishing_synapse(synapse_python: Any, federation_ca: TestCA, pg_base_dsn: str,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    """A Synapse whose users may publish rooms to its directory (for this module's tests only)."""
    data_dir = tmp_path_factory.mktemp("synapse-publishing")
    dsn = _run_coroutine(create_synapse_database(pg_base_dsn))
    server = SynapseServer(synapse_python, data_dir, dsn, federation_ca.issue(data_dir / "tls"),
                           {"room_list_publication_rules": [{"action": "allow"}]})
    try:
        server.start()
        RUNNING["publishing synapse"] = server
        yield server
    finally:
        RUNNING.pop("publishing synapse", None)
        server.stop()
        _run_coroutine(drop_database(dsn))


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
