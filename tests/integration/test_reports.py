"""Reporting events, rooms and users, and the admins' list of event reports."""

from __future__ import annotations

from typing import Any

from tests.harness import Client, ok, user


async def make_admin(server: Any, client: Client) -> None:
    await server.hs.db.execute("UPDATE users SET admin = 1 WHERE user_id = $1", client.user_id)


async def test_event_reports_reach_the_admins(server: Any) -> None:
    alice, bob, mod = await user(server, "alice"), await user(server, "bob"), await user(server, "mod")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{room}")
    bad = await alice.send_message(room, "something nasty")
    assert await ok(bob, "POST", f"/rooms/{room}/report/{bad}", {"reason": "spam"}) == {}
    assert await ok(bob, "POST", f"/rooms/{room}/report/{bad}", {}) == {}  # the reason is optional

    status, body = await mod.request("GET", "/_synapse/admin/v1/event_reports")
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    await make_admin(server, mod)
    listed = await ok(mod, "GET", "/_synapse/admin/v1/event_reports")
    assert listed["total"] == 2
    newest, oldest = listed["event_reports"]
    assert (oldest["event_id"], oldest["room_id"], oldest["user_id"], oldest["sender"], oldest["reason"]) == (
        bad, room, bob.user_id, alice.user_id, "spam")
    assert newest["reason"] is None
    page = await ok(mod, "GET", "/_synapse/admin/v1/event_reports", limit="1", dir="f")
    assert [r["reason"] for r in page["event_reports"]] == ["spam"] and page["next_token"] == 1
    assert (await ok(mod, "GET", "/_synapse/admin/v1/event_reports", room_id="!other:test.local"))["total"] == 0


async def test_reports_in_one_millisecond_list_in_the_order_they_came(server: Any, monkeypatch: Any) -> None:
    """Report IDs are random: reports stored with the same time listed in a random order."""
    import hs.db.stores.reports

    alice, mod = await user(server, "alice"), await user(server, "mod")
    await make_admin(server, mod)
    room = await alice.create_room(preset="public_chat")
    event_id = await alice.send_message(room, "hello")
    monkeypatch.setattr(hs.db.stores.reports, "now_ms", lambda: 1_700_000_000_000)
    reasons = [f"r{i}" for i in range(8)]
    for reason in reasons:
        await ok(alice, "POST", f"/rooms/{room}/report/{event_id}", {"reason": reason})
    listed = await ok(mod, "GET", "/_synapse/admin/v1/event_reports", dir="f")
    assert [r["reason"] for r in listed["event_reports"]] == reasons
    times = [r["received_ts"] for r in listed["event_reports"]]
    assert times == sorted(set(times)) and times[0] == 1_700_000_000_000


async def test_event_reports_need_a_joined_reporter_and_a_real_event(server: Any) -> None:
    alice, carol = await user(server, "alice"), await user(server, "carol")
    room = await alice.create_room(preset="private_chat")
    event_id = await alice.send_message(room, "private")
    for path in (f"/rooms/{room}/report/{event_id}", f"/rooms/{room}/report/$missing"):
        status, body = await carol.request("POST", path, {"reason": "x"})
        assert status == 404 and body["errcode"] == "M_NOT_FOUND", path
    status, body = await alice.request("POST", f"/rooms/{room}/report/$missing", {"reason": "x"})
    assert status == 404
    status, body = await alice.request("POST", f"/rooms/{room}/report/{event_id}", {"reason": 5})
    assert status == 400 and body["errcode"] == "M_BAD_JSON"
    status, body = await alice.request("POST", f"/rooms/{room}/report/{event_id}", {"reason": "x" * 1001})
    assert status == 400 and body["errcode"] == "M_BAD_JSON"


async def test_room_and_user_reports(server: Any) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="private_chat")
    # Bob need not be in the room or share one with the user he reports.
    assert await ok(bob, "POST", f"/rooms/{room}/report", {"reason": ""}) == {}
    assert await ok(bob, "POST", f"/users/{alice.user_id}/report", {"reason": "harassment"}) == {}
    status, body = await bob.request("POST", "/rooms/!nowhere:test.local/report", {"reason": "x"})
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await bob.request("POST", "/users/@nobody:test.local/report", {"reason": "x"})
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await bob.request("POST", f"/users/{alice.user_id}/report", {})
    assert status == 400 and body["errcode"] == "M_BAD_JSON"
    rows = await server.hs.db.fetch("SELECT kind, room_id, target_user_id, reason FROM content_reports"
                                    " ORDER BY kind")
    assert [(r["kind"], r["room_id"], r["target_user_id"], r["reason"]) for r in rows] == [
        ("room", room, None, ""), ("user", None, alice.user_id, "harassment")]
