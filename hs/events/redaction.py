"""The redaction algorithm: which parts of a PDU survive a redaction, per room version.

Redaction is not only for ``m.room.redaction``: the redacted form is what event signatures and the
reference hash (hence event IDs in room v3+) cover, so these rules must match the spec exactly for
each room version (text/rooms/fragments/v1-, v6-, v9-, v11-redactions; v12 keeps the v11 rules).
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from hs.events.room_versions import RoomVersion

JsonDict = dict[str, Any]

# Top-level keys kept by rooms v1-v10.
_KEEP_TOP_LEVEL_V1 = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "prev_state",
        "auth_events",
        "origin",
        "origin_server_ts",
        "membership",
    }
)
# Room v11 no longer protects the top-level "origin", "membership" and "prev_state".
_KEEP_TOP_LEVEL_V11 = _KEEP_TOP_LEVEL_V1 - {"origin", "membership", "prev_state"}


@cache
def _content_rules(room_version: RoomVersion) -> dict[str, frozenset[str] | None]:
    """Content keys kept per event type (None: all of them), from the room version's feature flags.

    - ``aliases`` on m.room.aliases: only while aliases had auth special-casing (v1-v5, dropped in v6).
    - ``allow`` on m.room.join_rules: came with restricted rooms (v8).
    - ``join_authorised_via_users_server`` on members: the restricted-join fix (v9).
    - v11: power levels keep ``invite``, create keeps everything, redaction keeps ``redacts``.
    """
    updated = room_version.updated_redaction_rules
    member = {"membership"}
    if room_version.restricted_join_rule_fix:
        member.add("join_authorised_via_users_server")
    join_rules = {"join_rule"}
    if room_version.restricted_join_rule:
        join_rules.add("allow")
    power_levels = {
        "ban",
        "events",
        "events_default",
        "kick",
        "redact",
        "state_default",
        "users",
        "users_default",
    }
    if updated:
        power_levels.add("invite")
    rules: dict[str, frozenset[str] | None] = {
        "m.room.member": frozenset(member),
        "m.room.create": None if updated else frozenset({"creator"}),
        "m.room.join_rules": frozenset(join_rules),
        "m.room.power_levels": frozenset(power_levels),
        "m.room.history_visibility": frozenset({"history_visibility"}),
    }
    if room_version.special_case_aliases_auth:
        rules["m.room.aliases"] = frozenset({"aliases"})
    if updated:
        rules["m.room.redaction"] = frozenset({"redacts"})
    return rules


def redact_shallow(pdu: JsonDict, room_version: RoomVersion) -> JsonDict:
    """The redacted form of ``pdu`` as a new dict that shares nested values with ``pdu``.

    Cheap enough to run for every event ID / signature computation, where the result is only encoded
    and thrown away. Do not mutate nested values of the result; use `redact_pdu` for a safe copy.
    """
    keep = _KEEP_TOP_LEVEL_V11 if room_version.updated_redaction_rules else _KEEP_TOP_LEVEL_V1
    out = {k: v for k, v in pdu.items() if k in keep}

    content = pdu.get("content")
    if not isinstance(content, dict):
        content = {}
    event_type = pdu.get("type")
    rules = _content_rules(room_version)
    new_content: JsonDict
    if not isinstance(event_type, str) or event_type not in rules:
        new_content = {}
    else:
        allowed = rules[event_type]
        if allowed is None:  # keep the whole content
            new_content = dict(content)
        else:
            new_content = {k: v for k, v in content.items() if k in allowed}
    if room_version.updated_redaction_rules and pdu.get("type") == "m.room.member":
        # v11: of a third-party invite only the "signed" block (needed by the auth rules) is kept.
        tpi = content.get("third_party_invite")
        if isinstance(tpi, dict) and "signed" in tpi:
            new_content["third_party_invite"] = {"signed": tpi["signed"]}
    # "content" is a required PDU key; a redacted event always carries one, possibly empty.
    out["content"] = new_content
    return out


def redact_pdu(pdu: JsonDict, room_version: RoomVersion) -> JsonDict:
    """Return a redacted deep copy of ``pdu`` following ``room_version``'s redaction rules.

    ``unsigned`` is dropped like any other unprotected key; callers that serve redacted events to
    clients add their own ``unsigned.redacted_because``.
    """
    return copy.deepcopy(redact_shallow(pdu, room_version))
