"""The federation sender's pure parts: rendezvous sharding and the room -> servers map."""

from __future__ import annotations

from hs.federation.sender import RoomServers, rendezvous_owner


def test_rendezvous_is_stable_and_spreads_destinations() -> None:
    destinations = [f"server{i}.example" for i in range(1000)]
    two = {d: rendezvous_owner(d, ["s1", "s2"]) for d in destinations}
    assert two == {d: rendezvous_owner(d, ["s2", "s1"]) for d in destinations}  # order does not matter
    shares = {i: sum(1 for o in two.values() if o == i) for i in ("s1", "s2")}
    assert all(400 < n < 600 for n in shares.values()), shares


def test_adding_a_sender_moves_only_what_it_takes() -> None:
    destinations = [f"server{i}.example" for i in range(1000)]
    before = {d: rendezvous_owner(d, ["s1", "s2"]) for d in destinations}
    after = {d: rendezvous_owner(d, ["s1", "s2", "s3"]) for d in destinations}
    moved = [d for d in destinations if before[d] != after[d]]
    # Every destination that moved went to the new sender, and it took about a third.
    assert all(after[d] == "s3" for d in moved)
    assert 250 < len(moved) < 420, len(moved)
    # Removing it again puts each back where it was.
    assert {d: rendezvous_owner(d, ["s1", "s2"]) for d in destinations} == before


def test_room_servers_follow_memberships() -> None:
    rs = RoomServers("here.example")
    rs.load([("!a", "@x:one.example"), ("!a", "@y:one.example"), ("!b", "@z:two.example")])
    assert rs.servers("!a") == {"one.example"} and rs.rooms_of("two.example") == ["!b"]
    rs.apply("!a", "@x:one.example", "leave")
    assert rs.servers("!a") == {"one.example"}  # @y is still there
    rs.apply("!a", "@y:one.example", "ban")
    assert rs.servers("!a") == frozenset() and rs.rooms_of("one.example") == []
    rs.apply("!a", "@me:here.example", "join")  # our own users are not a destination
    assert rs.servers("!a") == frozenset()
    rs.apply("!b", "@z:two.example", "join")  # a repeated join (profile change) counts once
    rs.apply("!b", "@z:two.example", "leave")
    assert rs.servers("!b") == frozenset()
    assert not rs.knows("!c")
    rs.load_room("!c", ["@p:three.example", "@me:here.example"])
    assert rs.knows("!c") and rs.servers("!c") == {"three.example"}
    rs.load_room("!c", [])
    assert rs.servers("!c") == frozenset() and rs.rooms_of("three.example") == []


def test_presence_is_batched_into_one_edu_per_transaction() -> None:
    from hs.federation.sender import coalesce_presence

    def presence(*states: tuple[str, str]) -> dict:
        return {"edu_type": "m.presence", "content": {"push": [{"user_id": u, "presence": p} for u, p in states]}}

    typing = {"edu_type": "m.typing", "content": {"room_id": "!r", "user_id": "@a:x", "typing": True}}
    out = coalesce_presence([presence(("@a:x", "online")), typing, presence(("@b:x", "online"), ("@a:x", "unavailable"))])
    assert out[0]["edu_type"] == "m.presence" and out[1] == typing and len(out) == 2
    assert out[0]["content"]["push"] == [{"user_id": "@b:x", "presence": "online"},
                                         {"user_id": "@a:x", "presence": "unavailable"}]
    assert coalesce_presence([typing]) == [typing]


def test_a_server_that_left_is_still_owed_its_leaving() -> None:
    rs = RoomServers("here.example")
    rs.load([("!a", "@x:one.example")])
    rs.apply("!a", "@x:one.example", "leave", 40)  # kicked at position 40
    assert rs.rooms_of("one.example") == [] and rs.rooms_left("one.example", 30) == {"!a": 40}
    assert rs.rooms_left("one.example", 40) == {}  # it has everything up to 40: forgotten
    rs.apply("!a", "@x:one.example", "leave", 50)  # not a member any more: nothing changes
    assert rs.rooms_left("one.example", 0) == {}
    rs.apply("!a", "@x:one.example", "join", 60)
    rs.apply("!a", "@x:one.example", "ban", 70)
    rs.apply("!a", "@x:one.example", "join", 80)  # back in: no longer "left"
    assert rs.rooms_left("one.example", 0) == {} and rs.rooms_of("one.example") == ["!a"]
