"""Event authorization rules for room versions 1-12.

Every PDU is checked against these rules before it becomes part of a room: on receipt over federation
(against its own auth events and against the state before it), when a local client sends it, and
during state resolution (iterative auth checks). Differences between room versions are read from the
`RoomVersion` feature flags, never from the version string, so the rule text of the spec maps onto one
code path.

`auth_events` throughout is a mapping ``(type, state_key) -> Event``: the events selected by
`auth_types_for_event` from the relevant room state. In room version 12 the create event is not listed in
a PDU's ``auth_events`` but the checker still needs it, so callers must include it in the mapping (see
`auth_types_for_event(..., for_checking=True)` and `auth_events_for_check`).

Cryptographic verification of event signatures and hashes is not done here (see hs.events.signing);
the only signature verified here is the identity server's signature on a third-party invite, because
it is part of the auth rules themselves.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import nacl.exceptions
import nacl.signing

from hs.events.event import Event, JsonDict, StateKey
from hs.events.room_versions import (
    DEFAULT_ROOM_VERSION,
    KNOWN_ROOM_VERSIONS,
    EventFormat,
    RoomVersion,
)

CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
THIRD_PARTY_INVITE = "m.room.third_party_invite"
ALIASES = "m.room.aliases"
REDACTION = "m.room.redaction"

CREATE_KEY: StateKey = (CREATE, "")
POWER_LEVELS_KEY: StateKey = (POWER_LEVELS, "")
JOIN_RULES_KEY: StateKey = (JOIN_RULES, "")

StateMap = Mapping[StateKey, Event]

# Levels used when the power levels event (or the key inside it) is absent. See m.room.power_levels.
LEVEL_DEFAULTS: dict[str, int] = {
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
    "state_default": 50,
    "events_default": 0,
    "users_default": 0,
}
_NAMED_LEVELS = tuple(LEVEL_DEFAULTS)
# Power level of the creator of a room version 1-11 room that has no m.room.power_levels event yet.
CREATOR_DEFAULT_LEVEL = 100


class AuthError(Exception):
    """An event is not allowed by the authorization rules (HTTP 403, M_FORBIDDEN by default)."""

    def __init__(self, msg: str, *, code: int = 403, errcode: str = "M_FORBIDDEN") -> None:
        super().__init__(msg)
        self.msg = msg
        self.code = code
        self.errcode = errcode


# -- identifiers -----------------------------------------------------------------------------------------

# server_name = hostname [ ":" port ]; hostname is an IPv4 literal, a bracketed IPv6 literal or a DNS name.
_SERVER_NAME_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Za-z.-]{1,255})(?::[0-9]{1,5})?")


def is_valid_server_name(name: str) -> bool:
    """Whether `name` follows the server name grammar of the appendices."""
    return _SERVER_NAME_RE.fullmatch(name) is not None


def is_valid_user_id(user_id: object) -> bool:
    """Whether `user_id` is a user ID that events may carry.

    The localpart is checked against the *historical* grammar (anything but ``:`` and NUL), because
    servers must keep accepting events from such users; the server name must be well formed.
    """
    if not isinstance(user_id, str) or not user_id.startswith("@"):
        return False
    if len(user_id.encode("utf-8")) > 255:
        return False
    localpart, sep, server_name = user_id[1:].partition(":")
    if not sep or "\x00" in localpart:
        return False
    return is_valid_server_name(server_name)


def get_domain(identifier: str) -> str:
    """The server name part of ``&localpart:domain`` (user IDs, v1-v11 room IDs, v1-v2 event IDs)."""
    return identifier.partition(":")[2]


# -- power levels ----------------------------------------------------------------------------------------

_INT_STRING_RE = re.compile(r"\s*[+-]?[0-9]+\s*")


def parse_power_level(value: Any, room_version: RoomVersion) -> int | None:
    """Interpret one power level value, or None if it is not a valid level in this room version.

    Room versions 1-9 accept integer strings (``" +050 "``) and floats (truncated) for compatibility with
    early implementations; room version 10 onwards only accepts real integers. JSON booleans are never
    levels even though Python treats them as ints.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if room_version.enforce_int_power_levels:
        return None
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str) and _INT_STRING_RE.fullmatch(value):
        return int(value.strip())
    return None


def _room_version_of(state: StateMap, room_version: RoomVersion | None) -> RoomVersion:
    """The room version to interpret `state` with: given explicitly, or taken from the events."""
    if room_version is not None:
        return room_version
    create = state.get(CREATE_KEY)
    if create is not None:
        return create.room_version
    for event in state.values():
        return event.room_version
    return KNOWN_ROOM_VERSIONS[DEFAULT_ROOM_VERSION]


def get_power_level_content(state: StateMap) -> JsonDict | None:
    """The content of the current m.room.power_levels event, or None if the room has none."""
    event = state.get(POWER_LEVELS_KEY)
    if event is None:
        return None
    content = event.content
    return content if isinstance(content, dict) else {}


def _level_in(content: JsonDict, name: str, room_version: RoomVersion) -> int:
    """A top level named level (``ban``, ``state_default`` ...) falling back to its default."""
    if name in content:
        level = parse_power_level(content[name], room_version)
        if level is not None:
            return level
    return LEVEL_DEFAULTS[name]


def get_named_level(state: StateMap, name: str, room_version: RoomVersion | None = None) -> int:
    """The level required for `name`: one of ban, kick, redact, invite, state_default, events_default,
    users_default. Defaults apply when the room has no power levels event or it lacks the key."""
    rv = _room_version_of(state, room_version)
    return _level_in(get_power_level_content(state) or {}, name, rv)


def get_send_level(
    state: StateMap, event_type: str, is_state: bool, room_version: RoomVersion | None = None
) -> int:
    """The *required power level* to send an event of `event_type` (``events`` overrides the defaults)."""
    rv = _room_version_of(state, room_version)
    content = get_power_level_content(state) or {}
    events = content.get("events")
    if isinstance(events, dict) and event_type in events:
        level = parse_power_level(events[event_type], rv)
        if level is not None:
            return level
    return _level_in(content, "state_default" if is_state else "events_default", rv)


def get_room_creators(state: StateMap, room_version: RoomVersion | None = None) -> set[str]:
    """The room's creators: ``content.creator`` (v1-v10), the create event's sender (v11), plus
    ``content.additional_creators`` from v12 where creators are privileged."""
    create = state.get(CREATE_KEY)
    if create is None:
        return set()
    rv = _room_version_of(state, room_version)
    if not rv.implicit_room_creator:
        creator = create.content.get("creator")
        return {creator} if isinstance(creator, str) else set()
    creators = {create.sender}
    if rv.privileged_creators:
        additional = create.content.get("additional_creators")
        if isinstance(additional, list):
            creators.update(user for user in additional if isinstance(user, str))
    return creators


def get_user_power_level(
    user_id: str, state: StateMap, room_version: RoomVersion | None = None
) -> int | float:
    """The power level of `user_id` given the auth events / room state `state`.

    v12 creators have infinite power (``math.inf``) whatever the power levels say. Without a power levels
    event the creator has 100 in v1-v11 and everybody else 0.
    """
    rv = _room_version_of(state, room_version)
    if rv.privileged_creators and user_id in get_room_creators(state, rv):
        return math.inf
    content = get_power_level_content(state)
    if content is None:
        if not rv.privileged_creators and user_id in get_room_creators(state, rv):
            return CREATOR_DEFAULT_LEVEL
        return 0
    users = content.get("users")
    if isinstance(users, dict) and user_id in users:
        level = parse_power_level(users[user_id], rv)
        if level is not None:
            return level
    return _level_in(content, "users_default", rv)


def get_membership(state: StateMap, user_id: str) -> str | None:
    """The membership of `user_id` in `state` (None when there is no member event)."""
    event = state.get((MEMBER, user_id))
    if event is None:
        return None
    membership = event.content.get("membership")
    return membership if isinstance(membership, str) else None


def get_join_rule(state: StateMap) -> str:
    """The current join rule; a room without an m.room.join_rules event is invite-only."""
    event = state.get(JOIN_RULES_KEY)
    if event is None:
        return "invite"
    rule = event.content.get("join_rule", "invite")
    return rule if isinstance(rule, str) else "invite"


# -- auth event selection -------------------------------------------------------------------------------


def auth_types_for_event(
    room_version: RoomVersion,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: JsonDict,
    *,
    for_checking: bool = False,
) -> set[StateKey]:
    """The state keys whose current events are the auth events of an event (auth events selection).

    With the default ``for_checking=False`` this is exactly what goes into the PDU's ``auth_events``: in
    room version 12 that excludes the create event, which the room ID implies. Pass ``for_checking=True``
    to get the keys `check_auth_rules` needs, which always include the create event.
    """
    if event_type == CREATE:
        return set()
    keys: set[StateKey] = {POWER_LEVELS_KEY, (MEMBER, sender)}
    if for_checking or not room_version.room_id_from_create_event:
        keys.add(CREATE_KEY)
    if event_type == MEMBER and isinstance(state_key, str):
        keys |= _member_auth_types(room_version, state_key, content)
    return keys


def _member_auth_types(room_version: RoomVersion, target: str, content: JsonDict) -> set[StateKey]:
    """Extra auth event keys for a membership event: target, join rules, 3pid token, authoriser."""
    keys: set[StateKey] = {(MEMBER, target)}
    membership = content.get("membership")
    if membership in ("join", "invite", "knock"):
        keys.add(JOIN_RULES_KEY)
    if membership == "invite":
        token = _third_party_token(content)
        if token is not None:
            keys.add((THIRD_PARTY_INVITE, token))
    if membership == "join" and room_version.restricted_join_rule:
        authoriser = content.get("join_authorised_via_users_server")
        if isinstance(authoriser, str):
            keys.add((MEMBER, authoriser))
    return keys


def _third_party_token(content: JsonDict) -> str | None:
    """``content.third_party_invite.signed.token`` if it is present and a string."""
    invite = content.get("third_party_invite")
    signed = invite.get("signed") if isinstance(invite, dict) else None
    token = signed.get("token") if isinstance(signed, dict) else None
    return token if isinstance(token, str) else None


def auth_events_for_check(event: Event, state: StateMap) -> dict[StateKey, Event]:
    """Pick from `state` the events `check_auth_rules` needs to authorise `event` against that state.

    Used by the local send path (state = current room state) and for the "state before the event" check.
    """
    keys = auth_types_for_event(
        event.room_version,
        event.type,
        event.sender,
        event.state_key,
        event.content,
        for_checking=True,
    )
    return {key: state[key] for key in keys if key in state}


def check_auth_events_selection(event: Event, auth_events: Iterable[Event]) -> None:
    """Check the events a PDU cites in ``auth_events`` (rules "considering the event's auth_events").

    Rejects duplicate (type, state_key) pairs, entries the auth events selection would not pick, a
    missing create event (v1-v11) or a present one (v12), and auth events from another room. Whether
    those events were themselves rejected is the caller's knowledge and is not checked here.
    """
    rv = event.room_version
    allowed = auth_types_for_event(rv, event.type, event.sender, event.state_key, event.content)
    seen: set[StateKey] = set()
    for auth_event in auth_events:
        if auth_event.state_key is None:
            raise AuthError(f"auth event {auth_event.event_id} is not a state event")
        key = auth_event.state_tuple
        if key in seen:
            raise AuthError(f"duplicate auth event for {key}")
        seen.add(key)
        if key not in allowed:
            raise AuthError(f"auth event {auth_event.event_id} for {key} is not a valid auth event")
        if auth_event.room_id != event.room_id:
            raise AuthError(f"auth event {auth_event.event_id} belongs to another room")
    if event.type != CREATE and not rv.room_id_from_create_event and CREATE_KEY not in seen:
        raise AuthError("no m.room.create event in auth events")


# -- the rules -----------------------------------------------------------------------------------------


def check_auth_rules(event: Event, auth_events: StateMap) -> None:
    """Raise AuthError unless `event` is allowed by the authorization rules of its room version.

    `auth_events` maps (type, state_key) to the events to authorise against and must include the
    create event even in room version 12.
    """
    rv = event.room_version
    if event.type == CREATE:
        _check_create(event)
        return
    _check_room_and_create(event, auth_events)
    if rv.special_case_aliases_auth and event.type == ALIASES:
        _check_aliases(event)
        return
    if event.type == MEMBER:
        _check_membership(event, auth_events)
        return
    if get_membership(auth_events, event.sender) != "join":
        raise AuthError(f"{event.sender} is not in the room")
    sender_level = get_user_power_level(event.sender, auth_events, rv)
    if event.type == THIRD_PARTY_INVITE:
        _require_level(sender_level, get_named_level(auth_events, "invite", rv), "send third party invites")
        return
    required = get_send_level(auth_events, event.type, event.is_state(), rv)
    _require_level(sender_level, required, f"send {event.type} events")
    state_key = event.state_key
    if isinstance(state_key, str) and state_key.startswith("@") and state_key != event.sender:
        raise AuthError("state keys starting with @ are reserved for the user they name")
    if event.type == POWER_LEVELS:
        _check_power_levels(event, auth_events, sender_level)
    if rv.event_format == EventFormat.V1 and event.type == REDACTION:
        _check_v1_redaction(event, auth_events, sender_level)


def _require_level(level: int | float, required: int, action: str) -> None:
    """Reject unless `level` reaches `required`."""
    if level < required:
        raise AuthError(f"power level {level} is below the {required} needed to {action}")


def _check_create(event: Event) -> None:
    """Rules for m.room.create: no prev events, room ID domain (v12: no room ID), known room version,
    ``creator`` (v1-v10) and a well-formed ``additional_creators`` (v12)."""
    rv = event.room_version
    if event.prev_event_ids:
        raise AuthError("the create event must not have prev_events")
    if rv.room_id_from_create_event:
        if "room_id" in event.pdu:
            raise AuthError("the create event must not have a room_id in this room version")
    elif get_domain(event.room_id or "") != get_domain(event.sender):
        raise AuthError("the room ID's domain does not match the creator's")
    content = event.content
    if "room_version" in content and content["room_version"] not in KNOWN_ROOM_VERSIONS:
        raise AuthError(f"unknown room version {content['room_version']!r}")
    if not rv.implicit_room_creator and "creator" not in content:
        raise AuthError("the create event has no creator")
    if rv.privileged_creators and "additional_creators" in content:
        additional = content["additional_creators"]
        if not isinstance(additional, list) or not all(is_valid_user_id(u) for u in additional):
            raise AuthError("additional_creators must be a list of valid user IDs")


def _check_room_and_create(event: Event, auth_events: StateMap) -> None:
    """Rules every non-create event shares: a create event is known, the room ID matches it (v12) and
    the auth events, and non-federating rooms only accept the creator's server."""
    create = auth_events.get(CREATE_KEY)
    if create is None:
        raise AuthError("no m.room.create event in auth events")
    if event.room_version.room_id_from_create_event and event.room_id != "!" + create.event_id[1:]:
        raise AuthError("the room ID is not derived from the room's create event")
    for auth_event in auth_events.values():
        if auth_event.room_id != event.room_id:
            raise AuthError(f"auth event {auth_event.event_id} belongs to another room")
    if create.content.get("m.federate", True) is False and get_domain(event.sender) != get_domain(
        create.sender
    ):
        raise AuthError("this room does not federate")


def _check_aliases(event: Event) -> None:
    """v1-v5 special case: a server may always set its own m.room.aliases (state key = its name)."""
    if event.state_key is None:
        raise AuthError("m.room.aliases must be a state event")
    if event.state_key != get_domain(event.sender):
        raise AuthError("m.room.aliases state key must be the sender's server name")


# -- membership ------------------------------------------------------------------------------------------


def _check_membership(event: Event, auth_events: StateMap) -> None:
    """Dispatch the m.room.member rules on the requested membership."""
    rv = event.room_version
    membership = event.content.get("membership")
    if not isinstance(event.state_key, str) or not isinstance(membership, str):
        raise AuthError("membership events need a state_key and content.membership")
    if rv.restricted_join_rule and "join_authorised_via_users_server" in event.content:
        _check_authoriser_signed(event)
    if membership == "join":
        _check_join(event, auth_events)
    elif membership == "invite":
        _check_invite(event, auth_events)
    elif membership == "leave":
        _check_leave(event, auth_events)
    elif membership == "ban":
        _check_ban(event, auth_events)
    elif membership == "knock" and rv.knock_join_rule:
        _check_knock(event, auth_events)
    else:
        raise AuthError(f"unknown membership {membership!r}")


def _check_authoriser_signed(event: Event) -> None:
    """A restricted join must carry a signature of the authorising user's server.

    Only the presence of the signature is checked here: verifying it cryptographically is part of the
    signature checks every PDU goes through (hs.events.signing), so callers must sign local events before
    authorising them.
    """
    authoriser = event.content["join_authorised_via_users_server"]
    if not is_valid_user_id(authoriser):
        raise AuthError("join_authorised_via_users_server is not a valid user ID")
    signatures = event.pdu.get("signatures")
    server_signatures = signatures.get(get_domain(authoriser)) if isinstance(signatures, dict) else None
    if not server_signatures:
        raise AuthError("the join is not signed by the authorising user's server")


def _first_creator(create: Event) -> str | None:
    """The user whose join directly after the create event is always allowed."""
    if create.room_version.implicit_room_creator:
        return create.sender
    creator = create.content.get("creator")
    return creator if isinstance(creator, str) else None


def _check_join(event: Event, auth_events: StateMap) -> None:
    """membership=join: the creator's first join, then bans and the join rule decide."""
    rv = event.room_version
    create = auth_events[CREATE_KEY]
    target = event.state_key
    prev = event.prev_event_ids
    if len(prev) == 1 and prev[0] == create.event_id and target == _first_creator(create):
        return
    if event.sender != target:
        raise AuthError("cannot make another user join")
    current = get_membership(auth_events, event.sender)
    if current == "ban":
        raise AuthError(f"{event.sender} is banned from the room")
    join_rule = get_join_rule(auth_events)
    if join_rule == "invite" or (rv.knock_join_rule and join_rule == "knock"):
        if current in ("invite", "join"):
            return
        raise AuthError("the room is invite only")
    if _is_restricted(join_rule, rv):
        if current in ("invite", "join"):
            return
        _check_join_authoriser(event, auth_events)
        return
    if join_rule == "public":
        return
    raise AuthError(f"cannot join a room with join rule {join_rule!r}")


def _is_restricted(join_rule: str, rv: RoomVersion) -> bool:
    """Whether the join rule lets a resident server authorise joins in this room version."""
    return (join_rule == "restricted" and rv.restricted_join_rule) or (
        join_rule == "knock_restricted" and rv.knock_restricted_join_rule
    )


def _check_join_authoriser(event: Event, auth_events: StateMap) -> None:
    """A restricted join needs a joined authoriser who could have invited the user instead."""
    rv = event.room_version
    authoriser = event.content.get("join_authorised_via_users_server")
    if not isinstance(authoriser, str):
        raise AuthError("restricted join without join_authorised_via_users_server")
    if get_membership(auth_events, authoriser) != "join":
        raise AuthError(f"the authorising user {authoriser} is not in the room")
    level = get_user_power_level(authoriser, auth_events, rv)
    if level < get_named_level(auth_events, "invite", rv):
        raise AuthError(f"the authorising user {authoriser} cannot invite")


def _check_invite(event: Event, auth_events: StateMap) -> None:
    """membership=invite: third party invites, otherwise a joined sender with the invite level."""
    rv = event.room_version
    target = event.state_key or ""
    target_membership = get_membership(auth_events, target)
    if "third_party_invite" in event.content:
        _check_third_party_invite(event, auth_events, target_membership)
        return
    if get_membership(auth_events, event.sender) != "join":
        raise AuthError(f"{event.sender} is not in the room")
    if target_membership in ("join", "ban"):
        raise AuthError(f"{target} is {'already in the room' if target_membership == 'join' else 'banned'}")
    level = get_user_power_level(event.sender, auth_events, rv)
    _require_level(level, get_named_level(auth_events, "invite", rv), "invite")


def _check_third_party_invite(event: Event, auth_events: StateMap, target_membership: str | None) -> None:
    """Invite redeeming an m.room.third_party_invite: the identity server's signature over ``signed``
    (which binds the token to the target user ID) must verify with one of the published keys."""
    if target_membership == "ban":
        raise AuthError(f"{event.state_key} is banned")
    invite = event.content["third_party_invite"]
    signed = invite.get("signed") if isinstance(invite, dict) else None
    if not isinstance(signed, dict):
        raise AuthError("third_party_invite has no signed object")
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError("third_party_invite.signed needs mxid and token")
    if mxid != event.state_key:
        raise AuthError("third_party_invite.signed.mxid does not match the invited user")
    invite_event = auth_events.get((THIRD_PARTY_INVITE, token))
    if invite_event is None:
        raise AuthError("no m.room.third_party_invite event for this token")
    if invite_event.sender != event.sender:
        raise AuthError("only the sender of the third party invite may redeem it")
    if not _signed_by_any(signed, _third_party_public_keys(invite_event.content)):
        raise AuthError("third_party_invite signature does not match any public key")


def _third_party_public_keys(content: JsonDict) -> list[bytes]:
    """The ed25519 keys of an m.room.third_party_invite: ``public_key`` and ``public_keys[].public_key``."""
    encoded: list[Any] = [content.get("public_key")]
    public_keys = content.get("public_keys")
    if isinstance(public_keys, list):
        encoded += [k.get("public_key") for k in public_keys if isinstance(k, dict)]
    keys = [decode_unpadded_base64(k) for k in encoded if isinstance(k, str)]
    return [k for k in keys if k is not None and len(k) == 32]


def decode_unpadded_base64(value: str) -> bytes | None:
    """Decode unpadded base64 in the standard or URL-safe alphabet; None if it is not base64."""
    standard = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _canonical_json(value: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no whitespace, UTF-8) as signatures are computed over."""
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    ).encode("utf-8")


def _signed_by_any(signed: JsonDict, public_keys: list[bytes]) -> bool:
    """Whether any ed25519 signature in ``signed.signatures`` verifies with any of `public_keys`."""
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict) or not public_keys:
        return False
    try:
        message = _canonical_json({k: v for k, v in signed.items() if k not in ("signatures", "unsigned")})
    except (TypeError, ValueError):
        return False
    for server_signatures in signatures.values():
        if not isinstance(server_signatures, dict):
            continue
        for key_id, encoded in server_signatures.items():
            if not str(key_id).startswith("ed25519:") or not isinstance(encoded, str):
                continue
            signature = decode_unpadded_base64(encoded)
            if signature is not None and len(signature) == 64 and _verifies(message, signature, public_keys):
                return True
    return False


def _verifies(message: bytes, signature: bytes, public_keys: list[bytes]) -> bool:
    """Whether `signature` over `message` verifies with one of `public_keys`."""
    for key in public_keys:
        try:
            nacl.signing.VerifyKey(key).verify(message, signature)
            return True
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
            continue
    return False


def _check_leave(event: Event, auth_events: StateMap) -> None:
    """membership=leave: leaving / rejecting yourself, or kicking and unbanning others."""
    rv = event.room_version
    target = event.state_key or ""
    target_membership = get_membership(auth_events, target)
    if event.sender == target:
        can_leave = {"invite", "join"} | ({"knock"} if rv.knock_join_rule else set())
        if target_membership in can_leave:
            return
        raise AuthError(f"{target} cannot leave with membership {target_membership!r}")
    if get_membership(auth_events, event.sender) != "join":
        raise AuthError(f"{event.sender} is not in the room")
    sender_level = get_user_power_level(event.sender, auth_events, rv)
    if target_membership == "ban" and sender_level < get_named_level(auth_events, "ban", rv):
        raise AuthError("power level too low to unban")
    _require_level(sender_level, get_named_level(auth_events, "kick", rv), "kick")
    if get_user_power_level(target, auth_events, rv) >= sender_level:
        raise AuthError(f"cannot kick {target}, whose power level is not below yours")


def _check_ban(event: Event, auth_events: StateMap) -> None:
    """membership=ban: a joined sender with the ban level, above the target."""
    rv = event.room_version
    if get_membership(auth_events, event.sender) != "join":
        raise AuthError(f"{event.sender} is not in the room")
    sender_level = get_user_power_level(event.sender, auth_events, rv)
    _require_level(sender_level, get_named_level(auth_events, "ban", rv), "ban")
    target = event.state_key or ""
    if get_user_power_level(target, auth_events, rv) >= sender_level:
        raise AuthError(f"cannot ban {target}, whose power level is not below yours")


def _check_knock(event: Event, auth_events: StateMap) -> None:
    """membership=knock (v7+): only in knock(-restricted) rooms, only for yourself, only from outside."""
    rv = event.room_version
    join_rule = get_join_rule(auth_events)
    if not (join_rule == "knock" or (join_rule == "knock_restricted" and rv.knock_restricted_join_rule)):
        raise AuthError(f"cannot knock on a room with join rule {join_rule!r}")
    if event.sender != event.state_key:
        raise AuthError("cannot knock on behalf of another user")
    if get_membership(auth_events, event.sender) in ("ban", "invite", "join"):
        raise AuthError(f"{event.sender} cannot knock with their current membership")


# -- power levels events -------------------------------------------------------------------------------


def _check_power_levels(event: Event, auth_events: StateMap, sender_level: int | float) -> None:
    """m.room.power_levels: well-formed values, v12 creators absent from ``users``, and no change that
    touches a level above the sender's own."""
    rv = event.room_version
    new = event.content
    if rv.enforce_int_power_levels:
        _check_integer_levels(new)
    new_users = _parse_users(new.get("users", {}), rv)
    if rv.privileged_creators:
        listed = get_room_creators(auth_events, rv) & set(new_users)
        if listed:
            raise AuthError(f"room creators cannot be given a power level: {sorted(listed)}")
    old = get_power_level_content(auth_events)
    if old is None:
        return
    for name in _NAMED_LEVELS:
        old_level = parse_power_level(old[name], rv) if name in old else None
        new_level = parse_power_level(new[name], rv) if name in new else None
        _check_level_change(name, old_level, new_level, sender_level)
    mapping_keys = ("events", "notifications") if rv.limit_notifications_power_levels else ("events",)
    for key in mapping_keys:
        old_map = _parse_level_map(old.get(key), rv)
        new_map = _parse_level_map(new.get(key), rv)
        for name in old_map.keys() | new_map.keys():
            _check_level_change(f"{key}.{name}", old_map.get(name), new_map.get(name), sender_level)
    old_users = _parse_users(old.get("users", {}), rv, strict=False)
    _check_user_changes(event.sender, old_users, new_users, sender_level)


def _check_integer_levels(content: JsonDict) -> None:
    """v10+: every level must be a JSON integer, not a string or float."""
    for name in _NAMED_LEVELS:
        if name in content and not _is_int(content[name]):
            raise AuthError(f"power level {name} must be an integer")
    for key in ("events", "notifications"):
        if key in content:
            value = content[key]
            if not isinstance(value, dict) or not all(_is_int(v) for v in value.values()):
                raise AuthError(f"power levels {key} must map to integers")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_users(users: Any, rv: RoomVersion, strict: bool = True) -> dict[str, int]:
    """Parse ``users``; with `strict`, reject anything but valid user IDs mapped to valid levels."""
    if not isinstance(users, dict):
        if strict:
            raise AuthError("power levels users must be an object")
        return {}
    parsed: dict[str, int] = {}
    for user_id, value in users.items():
        level = parse_power_level(value, rv)
        if level is None or not is_valid_user_id(user_id):
            if strict:
                raise AuthError(f"invalid power level entry {user_id!r}: {value!r}")
            continue
        parsed[user_id] = level
    return parsed


def _parse_level_map(value: Any, rv: RoomVersion) -> dict[str, int]:
    """Parse an ``events`` / ``notifications`` mapping, ignoring values that are not levels."""
    if not isinstance(value, dict):
        return {}
    parsed = {name: parse_power_level(level, rv) for name, level in value.items()}
    return {name: level for name, level in parsed.items() if level is not None}


def _check_level_change(name: str, old: int | None, new: int | None, sender_level: int | float) -> None:
    """A level may only be added, changed or removed if neither its old nor its new value exceeds the
    sender's own level."""
    if old == new:
        return
    if old is not None and old > sender_level:
        raise AuthError(f"cannot change {name} from {old}, above your level {sender_level}")
    if new is not None and new > sender_level:
        raise AuthError(f"cannot set {name} to {new}, above your level {sender_level}")


def _check_user_changes(
    sender: str, old: dict[str, int], new: dict[str, int], sender_level: int | float
) -> None:
    """Users at or above the sender's level are untouchable (except the sender demoting themselves),
    and nobody may be raised above the sender."""
    for user_id in old.keys() | new.keys():
        old_level, new_level = old.get(user_id), new.get(user_id)
        if old_level == new_level:
            continue
        if user_id != sender and old_level is not None and old_level >= sender_level:
            raise AuthError(f"cannot change the level of {user_id}, who is not below you")
        if new_level is not None and new_level > sender_level:
            raise AuthError(f"cannot raise {user_id} above your own level {sender_level}")


def _check_v1_redaction(event: Event, auth_events: StateMap, sender_level: int | float) -> None:
    """Rooms v1-v2 authorise redactions: the redact level, or redacting an event of your own server
    (event IDs carry the origin's domain in these versions)."""
    if sender_level >= get_named_level(auth_events, "redact", event.room_version):
        return
    redacts = event.redacts
    if isinstance(redacts, str) and get_domain(redacts) == get_domain(event.event_id):
        return
    raise AuthError("power level too low to redact events from other servers")
