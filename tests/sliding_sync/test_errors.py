"""Positions and errors: unknown and superseded positions are 400 M_UNKNOWN_POS, the previous position
may be retried (its answer was lost) and is answered again in full, malformed bodies are 400 with the
spec's errcodes, and more than 100 lists are refused.

Where Synapse 1.163 answers differently the test says so: a garbage `pos` is M_UNKNOWN ("Invalid stream
token") there, M_UNKNOWN_POS in hs (the client's cue to start over either way).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.sliding_sync.client import Target, timeline_bodies

LIST = {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": [["m.room.name", ""]]}


def _body(conn_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"lists": {"all": dict(LIST)}}
    if conn_id is not None:
        body["conn_id"] = conn_id
    return body


async def test_positions(target: Target) -> None:
    alice = await target.user("alice")
    bob = await target.user("bob")
    room = await alice.create_room(name="positions")
    await alice.send_message(room, "first")

    await alice.slide(_body("main"), pos=None)
    p1 = alice.pos
    assert p1
    await alice.send_message(room, "second")
    second = await alice.slide(_body("main"))
    assert timeline_bodies(second["rooms"][room]) == ["second"]
    p2 = alice.pos

    # The answer to p1 was lost: retrying p1 answers it again.
    retried = await alice.slide(_body("main"), pos=p1)
    assert timeline_bodies(retried["rooms"][room]) == ["second"]
    # And the connection goes on from the retried answer.
    await alice.send_message(room, "third")
    third = await alice.slide(_body("main"))
    assert timeline_bodies(third["rooms"][room]) == ["third"]
    await alice.slide(_body("main"))
    assert p2

    # p1 is now two positions behind: unknown in hs, which keeps a connection's last two positions.
    # (Synapse's pos is "<connection position>/<stream token>" and the connection position only moves
    # when what the connection has sent changes, so there p1 can still name a live position.)
    if target.kind == "hs":
        status, data = await alice.sync_raw(_body("main"), pos=p1)
        assert (status, data.get("errcode")) == (400, "M_UNKNOWN_POS"), data
    # Another user's position, and another connection's, are unknown too.
    status, data = await bob.sync_raw(_body("main"), pos=alice.pos)
    assert (status, data.get("errcode")) == (400, "M_UNKNOWN_POS"), data
    status, data = await alice.sync_raw(_body("other"), pos=alice.pos)
    assert (status, data.get("errcode")) == (400, "M_UNKNOWN_POS"), data
    # Starting over (no pos) works and sends the room from scratch.
    fresh = await alice.slide(_body("main"), pos=None)
    assert fresh["rooms"][room]["initial"] is True


async def test_unknown_pos(target: Target) -> None:
    alice = await target.user("alice")
    room = await alice.create_room(name="unknown pos")
    await alice.send_message(room, "hello")
    await alice.slide(_body(), pos=None)
    assert alice.pos
    if target.kind == "synapse":
        # Synapse's pos is "<connection position>/<stream token>".
        never_issued = "999999/" + alice.pos.split("/", 1)[1]
    else:
        never_issued = "987654321"
    status, data = await alice.sync_raw(_body(), pos=never_issued)
    assert (status, data.get("errcode")) == (400, "M_UNKNOWN_POS"), data
    status, data = await alice.sync_raw(_body(), pos="not-a-position")
    assert status == 400, data
    expected = "M_UNKNOWN" if target.kind == "synapse" else "M_UNKNOWN_POS"
    assert data.get("errcode") == expected, data


BAD_BODIES: list[tuple[str, Any, tuple[str, ...]]] = [
    ("lists not an object", {"lists": []}, ("M_BAD_JSON",)),
    ("ranges not a list", {"lists": {"a": {**LIST, "ranges": "x"}}}, ("M_BAD_JSON",)),
    # Synapse answers M_MISSING_PARAM (pydantic's missing field); either is a fine client error.
    ("required_state pair too short", {"lists": {"a": {**LIST, "required_state": [["m.room.name"]]}}},
     ("M_BAD_JSON", "M_MISSING_PARAM")),
    ("filter of the wrong type", {"lists": {"a": {**LIST, "filters": {"is_dm": "yes"}}}}, ("M_BAD_JSON",)),
    ("list name over 64 characters", {"lists": {"x" * 65: LIST}}, ("M_BAD_JSON",)),
    ("conn_id not a string", {"conn_id": 5, "lists": {"a": LIST}}, ("M_BAD_JSON",)),
    ("extension flag not a boolean", {"extensions": {"to_device": {"enabled": "yes"}}}, ("M_BAD_JSON",)),
    ("101 lists", {"lists": {f"l{i}": LIST for i in range(101)}}, ("M_BAD_JSON",)),
]


@pytest.mark.parametrize("case", [c[0] for c in BAD_BODIES])
async def test_bad_bodies(target: Target, case: str) -> None:
    _, body, errcodes = next(c for c in BAD_BODIES if c[0] == case)
    alice = await target.user("alice")
    status, data = await alice.sync_raw(body, pos=None)
    assert status == 400 and data.get("errcode") in errcodes, (case, status, data)


async def test_not_json_and_limits(target: Target) -> None:
    alice = await target.user("alice")
    path = ("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync" if alice.shape == "unstable"
            else "/_matrix/client/v4/sync")
    status, data = await alice.request("POST", path, raw=b"{not json")
    assert (status, data.get("errcode")) == (400, "M_NOT_JSON"), data
    status, data = await alice.request("POST", path, raw=b"[]")
    assert (status, data.get("errcode")) == (400, "M_BAD_JSON"), data
    status, data = await alice.request("POST", path, {}, auth=False)
    assert (status, data.get("errcode")) == (401, "M_MISSING_TOKEN"), data

    # Exactly 100 lists are fine.
    resp = await alice.slide({"lists": {f"l{i}": LIST for i in range(100)}}, pos=None)
    assert len(resp["lists"]) == 100

    # A bad timeout: a query parameter in the unstable shape, a body field in v4.
    if alice.shape == "unstable":
        status, data = await alice.request("POST", path, _body(), params={"timeout": "soon"})
        assert (status, data.get("errcode")) == (400, "M_INVALID_PARAM"), data
    else:
        status, data = await alice.request("POST", path, {**_body(), "timeout": "soon"})
        assert (status, data.get("errcode")) == (400, "M_BAD_JSON"), data
