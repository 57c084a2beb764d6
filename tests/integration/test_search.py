"""POST /search (room_events): word matching, ranking, order, keys, filters, visibility, pages,
context and state."""

from __future__ import annotations

from typing import Any

from tests.harness import Client, ok, user


async def search(client: Client, term: str, next_batch: str | None = None, **criteria: Any) -> dict[str, Any]:
    body = {"search_categories": {"room_events": {"search_term": term, **criteria}}}
    path = "/search" + (f"?next_batch={next_batch}" if next_batch else "")
    return (await ok(client, "POST", path, body))["search_categories"]["room_events"]  # type: ignore[no-any-return]


def bodies(result: dict[str, Any]) -> list[str]:
    return [r["result"]["content"].get("body") or r["result"]["content"].get("name") for r in result["results"]]


async def test_search_messages(server: Any) -> None:
    alice, bob, eve = await user(server, "alice"), await user(server, "bob"), await user(server, "eve")
    room = await alice.create_room(preset="private_chat", name="Cats and dogs", invite=[bob.user_id])
    await ok(bob, "POST", f"/join/{room}")
    other = await alice.create_room(preset="private_chat")
    await alice.send_message(room, "I like cats")
    await alice.send_message(room, "Cats, cats everywhere: CATS")
    await alice.send_message(room, "dogs only")
    await alice.send_message(other, "cats in the other room")

    found = await search(bob, "cat", keys=["content.body"])
    # Word prefixes, any case; ranked by occurrences; bob is not in `other`.
    assert bodies(found) == ["Cats, cats everywhere: CATS", "I like cats"]
    assert found["count"] == 2 and found["highlights"] == ["cat"]
    assert found["results"][0]["rank"] > found["results"][1]["rank"]
    assert found["results"][0]["result"]["room_id"] == room
    # By default the room's name (and topic) are searched too; `recent` is newest first.
    assert bodies(await search(bob, "cat", order_by="recent")) == [
        "Cats, cats everywhere: CATS", "I like cats", "Cats and dogs"]
    assert bodies(await search(bob, "like cats", keys=["content.body"])) == ["I like cats"]  # every word
    assert bodies(await search(bob, "dog", keys=["content.name"])) == ["Cats and dogs"]  # the room name
    assert bodies(await search(alice, "cats", filter={"rooms": [other]})) == ["cats in the other room"]
    assert bodies(await search(alice, "cats", keys=["content.body"], filter={"not_rooms": [room]})) == [
        "cats in the other room"]
    assert (await search(eve, "cats"))["results"] == []
    assert (await search(bob, "100%"))["results"] == []


async def test_pages_context_and_state(server: Any) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room(preset="private_chat", name="Notes")
    for i in range(5):
        await alice.send_message(room, f"note {i}")
    first = await search(alice, "note", order_by="recent", filter={"limit": 2}, keys=["content.body"],
                         event_context={"before_limit": 1, "after_limit": 1, "include_profile": True},
                         include_state=True)
    assert bodies(first) == ["note 4", "note 3"] and first["count"] == 5
    context = first["results"][1]["context"]
    assert [e["content"]["body"] for e in context["events_before"]] == ["note 2"]
    assert [e["content"]["body"] for e in context["events_after"]] == ["note 4"]
    assert context["profile_info"][alice.user_id]["displayname"] == "alice"
    assert "start" in context and "end" in context
    assert any(e["type"] == "m.room.name" for e in first["state"][room])
    second = await search(alice, "note", first["next_batch"], order_by="recent", filter={"limit": 2},
                          keys=["content.body"])
    assert bodies(second) == ["note 2", "note 1"]
    third = await search(alice, "note", second["next_batch"], order_by="recent", filter={"limit": 2},
                         keys=["content.body"])
    assert bodies(third) == ["note 0"] and "next_batch" not in third


async def test_bad_searches(server: Any) -> None:
    alice = await user(server, "alice")
    cases = [
        {},
        {"search_categories": {"room_events": {}}},
        {"search_categories": {"room_events": {"search_term": ""}}},
        {"search_categories": {"room_events": {"search_term": "x", "keys": ["content.url"]}}},
        {"search_categories": {"room_events": {"search_term": "x", "order_by": "best"}}},
        {"search_categories": {"room_events": {"search_term": "x", "filter": {"limit": 0}}}},
    ]
    for body in cases:
        status, data = await alice.request("POST", "/search", body)
        assert status == 400 and data["errcode"] == "M_BAD_JSON", body
    status, data = await alice.request("POST", "/search?next_batch=zz",
                                       {"search_categories": {"room_events": {"search_term": "x"}}})
    assert status == 400 and data["errcode"] == "M_INVALID_PARAM"
    assert await ok(alice, "POST", "/search", {"search_categories": {}}) == {"search_categories": {}}
