"""Table-driven tests of the authorization rules (hs.events.auth) for room versions 1-12.

Every case names a scenario, the room versions it applies to, the state to build and the event to check,
and whether that event is allowed (or, when denied, a fragment of the reason, so that a case cannot pass
by being rejected for an unrelated reason). Setup events are themselves auth-checked against the state
built so far, so the scenarios are rooms that could really exist.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nacl.signing
import pytest

from hs.events.auth import (
    CREATE_KEY,
    AuthError,
    auth_events_for_check,
    auth_types_for_event,
    check_auth_events_selection,
    check_auth_rules,
    get_named_level,
    get_power_level_content,
    get_send_level,
    get_user_power_level,
    parse_power_level,
)
from hs.events.event import Event, JsonDict, StateKey
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat

ALICE = "@alice:a.test"  # the room creator
BOB = "@bob:b.test"
CAROL = "@carol:c.test"
DAVE = "@dave:d.test"
MALLORY = "@mallory:m.test"
ERIN = "@erin:a.test"  # on the creator's server

MEMBER = "m.room.member"
PL = "m.room.power_levels"
JR = "m.room.join_rules"
TPI = "m.room.third_party_invite"

ALL = tuple(str(v) for v in range(1, 13))
MODERN = ("10", "11", "12")


def versions(low: int, high: int = 12) -> tuple[str, ...]:
    return tuple(str(v) for v in range(low, high + 1))


# -- room builder ---------------------------------------------------------------------------------------


class Room:
    """A room's state as a dict of events, built event by event."""

    def __init__(self, version: str, create_content: JsonDict | None = None) -> None:
        self.version = version
        self.rv = KNOWN_ROOM_VERSIONS[version]
        self.counter = 0
        content: JsonDict = {"room_version": version}
        if not self.rv.implicit_room_creator:
            content["creator"] = ALICE
        content.update(create_content or {})
        pdu: JsonDict = {
            "type": "m.room.create",
            "sender": ALICE,
            "state_key": "",
            "content": content,
            "prev_events": [],
            "auth_events": [],
            "depth": 1,
            "origin_server_ts": 0,
        }
        if not self.rv.room_id_from_create_event:
            pdu["room_id"] = "!room:a.test"
        self.create = Event(pdu, self.rv, event_id="$create:a.test")
        self.room_id = self.create.room_id
        self.state: dict[StateKey, Event] = {CREATE_KEY: self.create}
        self.last = self.create.event_id

    def refs(self, ids: list[str]) -> list[Any]:
        """prev/auth event references in this room version's format."""
        if self.rv.event_format == EventFormat.V1:
            return [[eid, {"sha256": "x"}] for eid in ids]
        return list(ids)

    def build(
        self,
        type: str,
        sender: str,
        content: JsonDict,
        state_key: str | None = None,
        event_id: str | None = None,
        **pdu_extra: Any,
    ) -> Event:
        self.counter += 1
        pdu: JsonDict = {
            "type": type,
            "sender": sender,
            "room_id": self.room_id,
            "content": content,
            "prev_events": self.refs([self.last]),
            "depth": self.counter + 1,
            "origin_server_ts": self.counter,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        keys = auth_types_for_event(self.rv, type, sender, state_key, content)
        pdu["auth_events"] = self.refs([self.state[k].event_id for k in sorted(keys) if k in self.state])
        pdu.update(pdu_extra)
        return Event(pdu, self.rv, event_id=event_id or f"$e{self.counter}:{sender.split(':')[1]}")

    def check(self, event: Event) -> None:
        check_auth_rules(event, auth_events_for_check(event, self.state))

    def put(self, event: Event, checked: bool = True) -> None:
        if checked:
            self.check(event)
        assert event.state_key is not None
        self.state[event.state_tuple] = event
        self.last = event.event_id

    def power_levels(self, users: dict[str, Any] | None = None, **content: Any) -> JsonDict:
        """Power levels content; the creator gets 100 except in v12, where creators may not be listed."""
        base: dict[str, Any] = {} if self.rv.privileged_creators else {ALICE: 100}
        return {"users": {**base, **(users or {})}, **content}


EventSpec = Callable[[Room], Event]
Op = Callable[[Room], None]


def ev(type: str, sender: str, content: JsonDict, state_key: str | None = None, **pdu: Any) -> EventSpec:
    return lambda room: room.build(type, sender, content, state_key, **pdu)


def msg(sender: str, type: str = "m.room.message", **pdu: Any) -> EventSpec:
    return ev(type, sender, {"body": "hi", "msgtype": "m.text"}, **pdu)


def mem(target: str, membership: str, sender: str | None = None, **content: Any) -> EventSpec:
    return ev(MEMBER, sender or target, {"membership": membership, **content}, target)


def pl_event(sender: str = ALICE, users: dict[str, Any] | None = None, **content: Any) -> EventSpec:
    return lambda room: room.build(PL, sender, room.power_levels(users, **content), "")


def raw_pl(sender: str, content: JsonDict) -> EventSpec:
    return ev(PL, sender, content, "")


def put(spec: EventSpec) -> Op:
    return lambda room: room.put(spec(room))


def force(spec: EventSpec) -> Op:
    """Insert state without checking it (for states other servers might hand us)."""
    return lambda room: room.put(spec(room), checked=False)


def join(user: str) -> Op:
    return put(mem(user, "join"))


def pl(users: dict[str, Any] | None = None, **content: Any) -> Op:
    return put(pl_event(ALICE, users, **content))


def join_rule(rule: str) -> Op:
    return put(ev(JR, ALICE, {"join_rule": rule}, ""))


def invite(user: str) -> Op:
    return put(mem(user, "invite", sender=ALICE))


def ban(user: str) -> Op:
    return put(mem(user, "ban", sender=ALICE))


def public_room(*members: str, **levels: Any) -> tuple[Op, ...]:
    """Alice's public room with `members` joined; `levels` go into the power levels content."""
    users = levels.pop("users", None)
    return (join(ALICE), pl(users, **levels), join_rule("public"), *(join(m) for m in members))


def invite_room(*members: str, **levels: Any) -> tuple[Op, ...]:
    users = levels.pop("users", None)
    return (join(ALICE), pl(users, **levels), join_rule("invite"), *(invite(m) for m in members))


# -- third party invites ---------------------------------------------------------------------------------

# Seed 2 gives a public key whose URL-safe encoding contains both "-" and "_" (see the test below).
IDENTITY_KEY = nacl.signing.SigningKey(b"\x02" * 32)
OTHER_KEY = nacl.signing.SigningKey(b"\x01" * 32)


def b64(data: bytes, urlsafe: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    return encoded.decode().rstrip("=")


def canonical(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def signed_block(
    mxid: str = BOB, token: str = "tok", key: nacl.signing.SigningKey = IDENTITY_KEY, signed_mxid: str = ""
) -> JsonDict:
    """The identity server's ``signed`` object; `signed_mxid` forges the content after signing."""
    signature = key.sign(canonical({"mxid": signed_mxid or mxid, "token": token})).signature
    return {"mxid": mxid, "token": token, "signatures": {"id.test": {"ed25519:0": b64(signature)}}}


def tpi_state(token: str = "tok", sender: str = ALICE, urlsafe: bool = False, in_list: bool = False) -> Op:
    public = b64(IDENTITY_KEY.verify_key.encode(), urlsafe)
    content: JsonDict = {"display_name": "b...", "key_validity_url": "https://id.test/isvalid"}
    if in_list:
        content["public_key"] = b64(OTHER_KEY.verify_key.encode())
        content["public_keys"] = [{"public_key": public}]
    else:
        content["public_key"] = public
    return put(ev(TPI, sender, content, token))


def tpi_invite(signed: JsonDict | None, target: str = BOB, sender: str = ALICE) -> EventSpec:
    third_party: JsonDict = {"display_name": "b..."}
    if signed is not None:
        third_party["signed"] = signed
    return mem(target, "invite", sender=sender, third_party_invite=third_party)


# -- restricted joins ------------------------------------------------------------------------------------


def restricted_join(user: str = CAROL, via: str | None = BOB, signed_by: str | None = "b.test") -> EventSpec:
    content: JsonDict = {"membership": "join"}
    if via is not None:
        content["join_authorised_via_users_server"] = via
    signatures: JsonDict = {"c.test": {"ed25519:0": "sig"}}
    if signed_by:
        signatures[signed_by] = {"ed25519:0": "sig"}
    return ev(MEMBER, user, content, user, signatures=signatures)


# -- create events ---------------------------------------------------------------------------------------


def create_ev(content: JsonDict | None = None, room_id: str | None = "default", **pdu: Any) -> EventSpec:
    """A fresh create event built for the room version (content overrides replace the defaults)."""

    def build(room: Room) -> Event:
        body: JsonDict = {"room_version": room.version}
        if not room.rv.implicit_room_creator:
            body["creator"] = ALICE
        body.update(content or {})
        body = {k: v for k, v in body.items() if v is not None}
        event: JsonDict = {"type": "m.room.create", "sender": ALICE, "state_key": "", "content": body}
        event |= {"prev_events": [], "auth_events": [], "depth": 1, "origin_server_ts": 0}
        if room_id == "default":
            if not room.rv.room_id_from_create_event:
                event["room_id"] = "!new:a.test"
        elif room_id is not None:
            event["room_id"] = room_id
        event.update(pdu)
        return Event(event, room.rv, event_id="$newcreate:a.test")

    return build


# -- the table -------------------------------------------------------------------------------------------

ALLOW = None


@dataclass(frozen=True)
class Case:
    name: str
    versions: tuple[str, ...]
    setup: tuple[Op, ...]
    event: EventSpec
    denied: str | None = ALLOW  # None: allowed; otherwise a fragment of the expected AuthError message
    create_content: JsonDict = field(default_factory=dict)


C = Case
NO_FEDERATION = {"m.federate": False}
CREATOR_PL = {BOB: 50}

# One case per line keeps the table scannable; the formatter would split every call over many lines.
# fmt: off
CASES: list[Case] = [
    # ---- m.room.create ----
    C("create: plain create event", ALL, (), create_ev()),
    C("create: with prev_events", ALL, (), create_ev(prev_events=[["$x", {}]]), "prev_events"),
    C("create: room ID domain differs from sender", versions(1, 11), (), create_ev(room_id="!new:b.test"), "domain"),
    C("create: v12 create event carries a room_id", ("12",), (), create_ev(room_id="!new:a.test"), "room_id"),
    C("create: unknown room_version", ALL, (), create_ev({"room_version": "999"}), "unknown room version"),
    C("create: non-string room_version", ALL, (), create_ev({"room_version": 10}), "unknown room version"),
    C("create: no creator before v11", versions(1, 10), (), create_ev({"creator": None}), "creator"),
    C("create: no creator needed from v11", ("11", "12"), (), create_ev({"creator": None})),
    C("create: additional_creators valid", ("12",), (), create_ev({"additional_creators": [BOB, CAROL]})),
    C("create: additional_creators not a list", ("12",), (), create_ev({"additional_creators": BOB}), "additional_creators"),
    C("create: additional_creators invalid user", ("12",), (), create_ev({"additional_creators": ["bob"]}), "additional_creators"),
    C("create: additional_creators non-string", ("12",), (), create_ev({"additional_creators": [BOB, 5]}), "additional_creators"),
    C("create: additional_creators bad server name", ("12",), (), create_ev({"additional_creators": ["@bob:b_c!"]}), "additional_creators"),
    C("create: additional_creators not validated before v12", ("10", "11"), (), create_ev({"additional_creators": 5})),
    # ---- room membership of the event and its auth events ----
    C("room: event for another room", versions(1, 11), public_room(BOB), msg(BOB, room_id="!other:a.test"), "another room"),
    C("room: v12 room ID must derive from the create event", ("12",), public_room(BOB), msg(BOB, room_id="!create:b.test"), "derived"),
    C("federate: other server cannot join", ALL, public_room(), mem(BOB, "join"), "federate", create_content=NO_FEDERATION),
    C("federate: other server's member cannot send", ALL, (*public_room(), force(mem(BOB, "join"))), msg(BOB), "federate", create_content=NO_FEDERATION),
    C("federate: creator's server can join", ALL, public_room(), mem(ERIN, "join"), create_content=NO_FEDERATION),
    C("federate: creator's server can send", ALL, public_room(ERIN), msg(ERIN), create_content=NO_FEDERATION),
    # ---- join ----
    C("join: creator's first join after create", ALL, (), mem(ALICE, "join")),
    C("join: someone else's join right after create", ALL, (), mem(BOB, "join"), "invite only"),
    C("join: public room", ALL, public_room(), mem(BOB, "join")),
    C("join: joining on behalf of someone else", ALL, public_room(BOB), mem(CAROL, "join", sender=BOB), "another user"),
    C("join: banned user into public room", ALL, (*public_room(BOB), ban(BOB)), mem(BOB, "join"), "banned"),
    C("join: invite room without invite", ALL, invite_room(), mem(BOB, "join"), "invite only"),
    C("join: invite room with invite", ALL, invite_room(BOB), mem(BOB, "join")),
    C("join: already joined (profile change)", ALL, (*invite_room(BOB), join(BOB)), mem(BOB, "join", displayname="B")),
    C("join: room without join rules is invite only", ALL, (join(ALICE), pl()), mem(BOB, "join"), "invite only"),
    C("join: unknown join rule", ALL, (join(ALICE), pl(), join_rule("private")), mem(BOB, "join"), "join rule"),
    C("join: knock room with invite", versions(7), (*invite_room(BOB), join_rule("knock")), mem(BOB, "join")),
    C("join: knock room without invite", versions(7), (*invite_room(), join_rule("knock")), mem(BOB, "join"), "invite only"),
    C("join: knock rule unknown before v7", versions(1, 6), (*invite_room(BOB), join_rule("knock")), mem(BOB, "join"), "join rule"),
    # ---- restricted joins ----
    C("restricted: authorised by joined member", versions(8), (*public_room(BOB), join_rule("restricted")), restricted_join()),
    C("knock_restricted: authorised by joined member", MODERN, (*public_room(BOB), join_rule("knock_restricted")), restricted_join()),
    C("knock_restricted: unknown before v10", ("8", "9"), (*public_room(BOB), join_rule("knock_restricted")), restricted_join(), "join rule"),
    C("restricted: unknown before v8", ("6", "7"), (*public_room(BOB), join_rule("restricted")), restricted_join(), "join rule"),
    C("restricted: without authoriser", versions(8), (*public_room(BOB), join_rule("restricted")), restricted_join(via=None), "join_authorised_via_users_server"),
    C("restricted: authoriser not joined", versions(8), (*public_room(), join_rule("restricted")), restricted_join(), "not in the room"),
    C("restricted: authoriser cannot invite", versions(8), (*public_room(BOB, invite=50), join_rule("restricted")), restricted_join(), "cannot invite"),
    C("restricted: authoriser with invite level", versions(8), (*public_room(BOB, invite=50, users=CREATOR_PL), join_rule("restricted")), restricted_join()),
    C("restricted: not signed by authoriser's server", versions(8), (*public_room(BOB), join_rule("restricted")), restricted_join(signed_by=None), "signed"),
    C("restricted: authoriser is not a user ID", versions(8), (*public_room(BOB), join_rule("restricted")), restricted_join(via="bob"), "valid user ID"),
    C("restricted: invited user needs no authoriser", versions(8), (*public_room(), join_rule("restricted"), invite(CAROL)), restricted_join(via=None)),
    # ---- invite ----
    C("invite: by joined member", ALL, public_room(BOB), mem(CAROL, "invite", sender=BOB)),
    C("invite: sender not joined", ALL, public_room(), mem(CAROL, "invite", sender=BOB), "not in the room"),
    C("invite: target already joined", ALL, public_room(BOB, CAROL), mem(CAROL, "invite", sender=BOB), "already in the room"),
    C("invite: target banned", ALL, (*public_room(BOB), ban(CAROL)), mem(CAROL, "invite", sender=BOB), "banned"),
    C("invite: sender below invite level", ALL, public_room(BOB, invite=10), mem(CAROL, "invite", sender=BOB), "needed to invite"),
    C("invite: sender at invite level", ALL, public_room(BOB, invite=10, users={BOB: 10}), mem(CAROL, "invite", sender=BOB)),
    # ---- third party invites ----
    C("3pid invite: valid signature", ALL, (*invite_room(), tpi_state()), tpi_invite(signed_block())),
    C("3pid invite: key in public_keys", MODERN, (*invite_room(), tpi_state(in_list=True)), tpi_invite(signed_block())),
    C("3pid invite: url-safe encoded key", MODERN, (*invite_room(), tpi_state(urlsafe=True)), tpi_invite(signed_block())),
    C("3pid invite: signed by another key", ALL, (*invite_room(), tpi_state()), tpi_invite(signed_block(key=OTHER_KEY)), "signature"),
    C("3pid invite: signed content forged", MODERN, (*invite_room(), tpi_state()), tpi_invite(signed_block(signed_mxid=CAROL)), "signature"),
    C("3pid invite: no signed object", MODERN, (*invite_room(), tpi_state()), tpi_invite(None), "signed"),
    C("3pid invite: signed without token", MODERN, (*invite_room(), tpi_state()), tpi_invite({"mxid": BOB}), "mxid and token"),
    C("3pid invite: mxid is not the target", MODERN, (*invite_room(), tpi_state()), tpi_invite(signed_block(mxid=CAROL)), "mxid"),
    C("3pid invite: no third party invite for token", MODERN, (*invite_room(), tpi_state(token="other")), tpi_invite(signed_block()), "no m.room.third_party_invite"),
    C("3pid invite: redeemed by another sender", MODERN, (*public_room(BOB, users={BOB: 50}), tpi_state()), tpi_invite(signed_block(CAROL), target=CAROL, sender=BOB), "only the sender"),
    C("3pid invite: target banned", MODERN, (*invite_room(), tpi_state(), ban(BOB)), tpi_invite(signed_block()), "banned"),
    C("3pid event: sender with invite level", ALL, public_room(BOB), ev(TPI, BOB, {"public_key": "k"}, "tok")),
    C("3pid event: sender below invite level", ALL, public_room(BOB, invite=50), ev(TPI, BOB, {"public_key": "k"}, "tok"), "needed to send third party invites"),
    # ---- leave ----
    C("leave: member leaves", ALL, public_room(BOB), mem(BOB, "leave")),
    C("leave: invitee rejects invite", ALL, invite_room(BOB), mem(BOB, "leave")),
    C("leave: knocker rescinds knock", versions(7), (*invite_room(), join_rule("knock"), put(mem(BOB, "knock"))), mem(BOB, "leave")),
    C("leave: non-member cannot leave", ALL, public_room(), mem(BOB, "leave"), "cannot leave"),
    C("leave: banned user cannot unban themselves", ALL, (*public_room(BOB), ban(BOB)), mem(BOB, "leave"), "cannot leave"),
    C("kick: by higher power with kick level", ALL, public_room(BOB), mem(BOB, "leave", sender=ALICE)),
    C("kick: below kick level", ALL, public_room(BOB, CAROL, users={BOB: 10}), mem(CAROL, "leave", sender=BOB), "needed to kick"),
    C("kick: target at same level", ALL, public_room(BOB, CAROL, users={BOB: 50, CAROL: 50}), mem(CAROL, "leave", sender=BOB), "not below"),
    C("kick: target below sender", ALL, public_room(BOB, CAROL, users={BOB: 50, CAROL: 49}), mem(CAROL, "leave", sender=BOB)),
    C("kick: sender not joined", ALL, (*public_room(CAROL, users={BOB: 50}),), mem(CAROL, "leave", sender=BOB), "not in the room"),
    C("kick: custom kick level", ALL, public_room(BOB, CAROL, kick=0, users={BOB: 1}), mem(CAROL, "leave", sender=BOB)),
    C("unban: with ban level", ALL, (*public_room(BOB), ban(CAROL)), mem(CAROL, "leave", sender=ALICE)),
    C("unban: kick level but below ban level", ALL, (*public_room(BOB, users={BOB: 50}, ban=75), ban(CAROL)), mem(CAROL, "leave", sender=BOB), "unban"),
    # ---- ban ----
    C("ban: by higher power", ALL, public_room(BOB), mem(BOB, "ban", sender=ALICE)),
    C("ban: non-member can be banned", ALL, public_room(), mem(BOB, "ban", sender=ALICE)),
    C("ban: below ban level", ALL, public_room(BOB, CAROL, users={BOB: 10}), mem(CAROL, "ban", sender=BOB), "needed to ban"),
    C("ban: target at same level", ALL, public_room(BOB, CAROL, users={BOB: 50, CAROL: 50}), mem(CAROL, "ban", sender=BOB), "not below"),
    C("ban: sender not joined", ALL, public_room(CAROL, users={BOB: 50}), mem(CAROL, "ban", sender=BOB), "not in the room"),
    # ---- knock ----
    C("knock: knock room", versions(7), (*invite_room(), join_rule("knock")), mem(BOB, "knock")),
    C("knock: knock_restricted room", MODERN, (*invite_room(), join_rule("knock_restricted")), mem(BOB, "knock")),
    C("knock: knock_restricted unknown before v10", ("7", "8", "9"), (*invite_room(), join_rule("knock_restricted")), mem(BOB, "knock"), "cannot knock"),
    C("knock: public room", versions(7), public_room(), mem(BOB, "knock"), "cannot knock"),
    C("knock: for another user", versions(7), (*public_room(CAROL), join_rule("knock")), mem(BOB, "knock", sender=CAROL), "another user"),
    C("knock: while invited", versions(7), (*invite_room(BOB), join_rule("knock")), mem(BOB, "knock"), "current membership"),
    C("knock: while banned", versions(7), (*invite_room(), ban(BOB), join_rule("knock")), mem(BOB, "knock"), "current membership"),
    C("knock: unknown membership before v7", versions(1, 6), (*invite_room(), join_rule("knock")), mem(BOB, "knock"), "unknown membership"),
    C("membership: unknown value", ALL, public_room(BOB), mem(BOB, "wave"), "unknown membership"),
    C("membership: missing", ALL, public_room(BOB), ev(MEMBER, BOB, {}, BOB), "membership"),
    C("membership: no state key", ALL, public_room(BOB), ev(MEMBER, BOB, {"membership": "join"}), "state_key"),
    # ---- other events: membership and required power level ----
    C("message: sender not joined", ALL, public_room(), msg(BOB), "not in the room"),
    C("message: invited but not joined", ALL, invite_room(BOB), msg(BOB), "not in the room"),
    C("message: events_default 0", ALL, public_room(BOB), msg(BOB)),
    C("message: below events_default", ALL, public_room(BOB, events_default=10), msg(BOB), "send m.room.message"),
    C("message: events overrides events_default", ALL, public_room(BOB, events={"m.room.message": 20}), msg(BOB), "send m.room.message"),
    C("state: below state_default", ALL, public_room(BOB), ev("m.room.topic", BOB, {"topic": "t"}, ""), "send m.room.topic"),
    C("state: at state_default", ALL, public_room(BOB, users=CREATOR_PL), ev("m.room.topic", BOB, {"topic": "t"}, "")),
    C("state: events override lowers a state event", ALL, public_room(BOB, events={"m.room.topic": 0}), ev("m.room.topic", BOB, {"topic": "t"}, "")),
    C("state: custom state_default", ALL, public_room(BOB, state_default=0), ev("m.room.topic", BOB, {"topic": "t"}, "")),
    C("state: no power levels, creator has 100", ALL, (join(ALICE),), ev("m.room.name", ALICE, {"name": "n"}, "")),
    C("state: no power levels, others have 0", ALL, (join(ALICE), join_rule("public"), join(BOB)), ev("m.room.name", BOB, {"name": "n"}, ""), "send m.room.name"),
    C("message: no power levels, others can talk", ALL, (join(ALICE), join_rule("public"), join(BOB)), msg(BOB)),
    C("state key: own user ID", ALL, public_room(BOB, state_default=0), ev("m.custom", BOB, {}, BOB)),
    C("state key: someone else's user ID", ALL, public_room(BOB, state_default=0), ev("m.custom", BOB, {}, CAROL), "reserved"),
    C("state key: even admins cannot use others' IDs", ALL, public_room(BOB), ev("m.custom", ALICE, {}, BOB), "reserved"),
    # ---- v12 creators ----
    C("creators: additional creator has unlimited power", ("12",), public_room(BOB), ev("m.room.topic", BOB, {"topic": "t"}, ""), create_content={"additional_creators": [BOB]}),
    C("creators: additional creators mean nothing before v12", ("11",), public_room(BOB), ev("m.room.topic", BOB, {"topic": "t"}, ""), "send m.room.topic", create_content={"additional_creators": [BOB]}),
    C("creators: creator kicks a level-100 admin", ("12",), public_room(BOB, users={BOB: 100}), mem(BOB, "leave", sender=ALICE)),
    C("creators: level-100 admin cannot kick the creator", ("12",), public_room(BOB, users={BOB: 100}), mem(ALICE, "leave", sender=BOB), "not below"),
    C("creators: creators cannot ban each other", ("12",), public_room(BOB), mem(ALICE, "ban", sender=BOB), "not below", create_content={"additional_creators": [BOB]}),
    C("creators: admin at 100 can kick a 99 in v11", ("11",), public_room(BOB, CAROL, users={BOB: 100, CAROL: 99}), mem(CAROL, "leave", sender=BOB)),
    # ---- redactions ----
    C("redaction v1-2: own server's event", ("1", "2"), public_room(BOB), msg(BOB, type="m.room.redaction", redacts="$x:b.test", event_id="$r:b.test")),
    C("redaction v1-2: other server's event", ("1", "2"), public_room(BOB), msg(BOB, type="m.room.redaction", redacts="$x:a.test", event_id="$r:b.test"), "redact"),
    C("redaction v1-2: with redact level", ("1", "2"), public_room(BOB, redact=0), msg(BOB, type="m.room.redaction", redacts="$x:a.test", event_id="$r:b.test")),
    C("redaction v3+: redact level not an auth rule", versions(3, 10), public_room(BOB), msg(BOB, type="m.room.redaction", redacts="$x")),
    C("redaction v11+: redacts in content", ("11", "12"), public_room(BOB), ev("m.room.redaction", BOB, {"redacts": "$x"})),
    C("redaction: events level for m.room.redaction", ALL, public_room(BOB, events={"m.room.redaction": 50}), msg(BOB, type="m.room.redaction", redacts="$x:b.test", event_id="$r:b.test"), "send m.room.redaction"),
    # ---- power levels ----
    C("power levels: first power levels event", ALL, (join(ALICE),), pl_event(ALICE, {BOB: 50})),
    C("power levels: non-creator cannot create them", ALL, (join(ALICE), join_rule("public"), join(BOB)), pl_event(BOB), "send m.room.power_levels"),
    C("power levels: raise other to own level", ALL, public_room(BOB, CAROL, users={BOB: 50}), pl_event(BOB, {BOB: 50, CAROL: 50})),
    C("power levels: raise other above own level", ALL, public_room(BOB, CAROL, users={BOB: 50}), pl_event(BOB, {BOB: 50, CAROL: 51}), "above your own level"),
    C("power levels: raise self above own level", ALL, public_room(BOB, users={BOB: 50}), pl_event(BOB, {BOB: 51}), "above your own level"),
    C("power levels: demote self", ALL, public_room(BOB, users={BOB: 50}), pl_event(BOB, {BOB: 10})),
    C("power levels: demote peer at own level", ALL, public_room(BOB, CAROL, users={BOB: 50, CAROL: 50}), pl_event(BOB, {BOB: 50, CAROL: 0}), "not below you"),
    C("power levels: remove peer at own level", ALL, public_room(BOB, CAROL, users={BOB: 50, CAROL: 50}), pl_event(BOB, {BOB: 50}), "not below you"),
    C("power levels: demote user below own level", ALL, public_room(BOB, CAROL, users={BOB: 50, CAROL: 40}), pl_event(BOB, {BOB: 50, CAROL: 0})),
    C("power levels: remove user below own level", ALL, public_room(BOB, CAROL, users={BOB: 50, CAROL: 40}), pl_event(BOB, {BOB: 50})),
    C("power levels: cannot touch the admin", versions(1, 11), public_room(BOB, users={BOB: 50}), raw_pl(BOB, {"users": {ALICE: 0, BOB: 50}}), "not below you"),
    C("power levels: lower a named level", ALL, public_room(BOB, users={BOB: 50}), pl_event(BOB, {BOB: 50}, ban=40)),
    C("power levels: raise a named level above own", ALL, public_room(BOB, users={BOB: 50}), pl_event(BOB, {BOB: 50}, state_default=60), "state_default"),
    C("power levels: change a named level that is above own", ALL, public_room(BOB, users={BOB: 50}, kick=60), pl_event(BOB, {BOB: 50}, kick=50), "kick"),
    C("power levels: remove a named level that is above own", ALL, public_room(BOB, users={BOB: 50}, kick=60), pl_event(BOB, {BOB: 50}), "kick"),
    C("power levels: add a named level at own level", ALL, public_room(BOB, users={BOB: 50}), pl_event(BOB, {BOB: 50}, redact=50)),
    C("power levels: add events entry at own level", ALL, public_room(BOB, users={BOB: 50}), pl_event(BOB, {BOB: 50}, events={"m.room.name": 50})),
    C("power levels: add events entry above own", ALL, public_room(BOB, users={BOB: 50}), pl_event(BOB, {BOB: 50}, events={"m.room.name": 51}), "events.m.room.name"),
    C("power levels: change events entry above own", ALL, public_room(BOB, users={BOB: 50}, events={"m.room.tombstone": 100}), pl_event(BOB, {BOB: 50}, events={"m.room.tombstone": 0}), "events.m.room.tombstone"),
    C("power levels: events_default change above own", ALL, public_room(BOB, users={BOB: 50}), pl_event(BOB, {BOB: 50}, events_default=70), "events_default"),
    C("power levels: notifications above own from v6", versions(6), public_room(BOB, users={BOB: 50}), pl_event(BOB, {BOB: 50}, notifications={"room": 60}), "notifications.room"),
    C("power levels: notifications unchecked before v6", versions(1, 5), public_room(BOB, users={BOB: 50}), pl_event(BOB, {BOB: 50}, notifications={"room": 60})),
    C("power levels: users not an object", ALL, (join(ALICE),), raw_pl(ALICE, {"users": [ALICE]}), "users must be an object"),
    C("power levels: users key not a user ID", ALL, (join(ALICE),), pl_event(ALICE, {"bob": 10}), "invalid power level entry"),
    C("power levels: users value not a level", ALL, (join(ALICE),), pl_event(ALICE, {BOB: "high"}), "invalid power level entry"),
    C("power levels: string user level before v10", versions(1, 9), (join(ALICE),), pl_event(ALICE, {BOB: " +50 "})),
    C("power levels: string user level from v10", MODERN, (join(ALICE),), pl_event(ALICE, {BOB: "50"}), "invalid power level entry"),
    C("power levels: float user level before v10", versions(1, 9), (join(ALICE),), pl_event(ALICE, {BOB: 50.5})),
    C("power levels: boolean user level", ALL, (join(ALICE),), pl_event(ALICE, {BOB: True}), "invalid power level entry"),
    C("power levels: string named level before v10", versions(1, 9), (join(ALICE),), pl_event(ALICE, ban="50")),
    C("power levels: string named level from v10", MODERN, (join(ALICE),), pl_event(ALICE, ban="50"), "must be an integer"),
    C("power levels: string events level from v10", MODERN, (join(ALICE),), pl_event(ALICE, events={"m.room.name": "50"}), "events must map to integers"),
    C("power levels: notifications not an object from v10", MODERN, (join(ALICE),), pl_event(ALICE, notifications=50), "notifications must map"),
    C("power levels: string levels count before v10", versions(1, 9), public_room(BOB, users={BOB: "50"}), ev("m.room.topic", BOB, {"topic": "t"}, "")),
    C("power levels: v12 creator listed in users", ("12",), (join(ALICE),), raw_pl(ALICE, {"users": {ALICE: 100}}), "creators cannot"),
    C("power levels: v12 additional creator listed in users", ("12",), public_room(BOB), raw_pl(ALICE, {"users": {BOB: 100}}), "creators cannot", create_content={"additional_creators": [BOB]}),
    C("power levels: creator listed in users before v12", ("10", "11"), (join(ALICE),), raw_pl(ALICE, {"users": {ALICE: 100}})),
    C("power levels: v12 creator changes anything", ("12",), public_room(BOB, users={BOB: 100}, kick=100), raw_pl(ALICE, {"users": {BOB: 1000}, "kick": 5000})),
    # ---- m.room.aliases special case ----
    C("aliases: own server name as state key (v1-5)", versions(1, 5), public_room(), ev("m.room.aliases", MALLORY, {"aliases": ["#a:m.test"]}, "m.test")),
    C("aliases: other server's state key (v1-5)", versions(1, 5), public_room(), ev("m.room.aliases", MALLORY, {"aliases": []}, "a.test"), "server name"),
    C("aliases: must be state (v1-5)", versions(1, 5), public_room(), ev("m.room.aliases", MALLORY, {"aliases": []}), "state event"),
    C("aliases: ordinary state event from v6", versions(6), public_room(), ev("m.room.aliases", MALLORY, {"aliases": []}, "m.test"), "not in the room"),
]
# fmt: on


def _case_params() -> list[Any]:
    return [
        pytest.param(case, version, id=f"{case.name} [v{version}]")
        for case in CASES
        for version in case.versions
    ]


@pytest.mark.parametrize(("case", "version"), _case_params())
def test_auth_rule(case: Case, version: str) -> None:
    room = Room(version, case.create_content)
    for op in case.setup:
        op(room)
    event = case.event(room)
    if case.denied is None:
        room.check(event)
    else:
        with pytest.raises(AuthError, match=re.escape(case.denied)):
            room.check(event)


def test_table_covers_every_room_version() -> None:
    assert {v for case in CASES for v in case.versions} == set(KNOWN_ROOM_VERSIONS)
    assert len({case.name for case in CASES}) == len(CASES), "case names must be unique"


# -- non-table checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_missing_create_event_is_rejected(version: str) -> None:
    room = Room(version)
    for op in public_room(BOB):
        op(room)
    event = msg(BOB)(room)
    auth = auth_events_for_check(event, room.state)
    del auth[CREATE_KEY]
    with pytest.raises(AuthError, match="no m.room.create"):
        check_auth_rules(event, auth)


def test_urlsafe_key_case_exercises_the_urlsafe_alphabet() -> None:
    encoded = b64(IDENTITY_KEY.verify_key.encode(), urlsafe=True)
    assert "-" in encoded and "_" in encoded


def test_auth_error_attributes() -> None:
    room = Room("11")
    with pytest.raises(AuthError) as info:
        room.check(msg(BOB)(room))
    assert info.value.code == 403
    assert info.value.errcode == "M_FORBIDDEN"
    assert "@bob:b.test" in str(info.value)


@pytest.mark.parametrize("version", MODERN)
def test_auth_types_for_member_events(version: str) -> None:
    rv = KNOWN_ROOM_VERSIONS[version]
    content = {
        "membership": "join",
        "join_authorised_via_users_server": BOB,
    }
    keys = auth_types_for_event(rv, MEMBER, CAROL, CAROL, content)
    expected = {(PL, ""), (MEMBER, CAROL), (JR, ""), (MEMBER, BOB)}
    if version != "12":
        expected.add(CREATE_KEY)
    assert keys == expected
    assert auth_types_for_event(rv, MEMBER, CAROL, CAROL, content, for_checking=True) == expected | {
        CREATE_KEY
    }

    invite = {"membership": "invite", "third_party_invite": {"signed": signed_block()}}
    assert (TPI, "tok") in auth_types_for_event(rv, MEMBER, ALICE, BOB, invite)
    leave = auth_types_for_event(rv, MEMBER, ALICE, BOB, {"membership": "leave"}, for_checking=True)
    assert leave == {CREATE_KEY, (PL, ""), (MEMBER, ALICE), (MEMBER, BOB)}
    assert auth_types_for_event(rv, "m.room.create", ALICE, "", {}) == set()


def test_authoriser_not_selected_before_restricted_rooms() -> None:
    content = {"membership": "join", "join_authorised_via_users_server": BOB}
    keys = auth_types_for_event(KNOWN_ROOM_VERSIONS["7"], MEMBER, CAROL, CAROL, content)
    assert (MEMBER, BOB) not in keys


@pytest.mark.parametrize("version", MODERN)
def test_auth_events_selection(version: str) -> None:
    room = Room(version)
    for op in public_room(BOB):
        op(room)
    event = msg(BOB)(room)
    good = [room.state[(PL, "")], room.state[(MEMBER, BOB)]]
    if version != "12":
        good.append(room.create)
    check_auth_events_selection(event, good)
    with pytest.raises(AuthError, match="duplicate"):
        check_auth_events_selection(event, [*good, room.state[(PL, "")]])
    with pytest.raises(AuthError, match="not a valid auth event"):
        check_auth_events_selection(event, [*good, room.state[(JR, "")]])
    if version == "12":
        with pytest.raises(AuthError, match="not a valid auth event"):
            check_auth_events_selection(event, [*good, room.create])
    else:
        with pytest.raises(AuthError, match="no m.room.create"):
            check_auth_events_selection(event, good[:-1])


def test_power_level_helpers() -> None:
    v11, v12, v9 = (Room(v) for v in ("11", "12", "9"))
    # No power levels event: the creator has 100 (v1-v11), creators have infinity (v12).
    assert get_user_power_level(ALICE, v11.state) == 100
    assert get_user_power_level(BOB, v11.state) == 0
    assert get_user_power_level(ALICE, v12.state) == math.inf
    assert get_power_level_content(v11.state) is None
    assert get_named_level(v11.state, "state_default") == 50
    assert get_named_level(v11.state, "invite") == 0
    for room in (v11, v12, v9):
        for op in public_room(BOB, users={BOB: "20"} if room is v9 else {BOB: 20}, users_default=5, kick=30):
            op(room)
    assert get_user_power_level(BOB, v11.state) == 20
    assert get_user_power_level(CAROL, v11.state) == 5
    assert get_user_power_level(BOB, v9.state) == 20
    assert get_user_power_level(ALICE, v12.state) == math.inf
    assert get_named_level(v11.state, "kick") == 30
    assert get_named_level(v11.state, "ban") == 50
    assert get_send_level(v11.state, "m.room.topic", True) == 50
    assert get_send_level(v11.state, "m.room.message", False) == 0
    assert parse_power_level("007", KNOWN_ROOM_VERSIONS["9"]) == 7
    assert parse_power_level("1_000", KNOWN_ROOM_VERSIONS["9"]) is None
    assert parse_power_level(7.9, KNOWN_ROOM_VERSIONS["9"]) == 7
    assert parse_power_level(7.9, KNOWN_ROOM_VERSIONS["10"]) is None
