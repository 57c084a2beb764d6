"""Room versions 1-12: the feature flags that change event format, auth rules and state resolution.

Every algorithm that differs between room versions reads a flag from `RoomVersion` instead of comparing
version strings, so adding a version is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class EventFormat(Enum):
    V1 = 1  # event_id inside the event, prev/auth events as [id, hashes] pairs (rooms v1, v2)
    V2 = 2  # event_id is the reference hash, standard unpadded base64 (room v3)
    V3 = 3  # event_id is the reference hash, URL-safe unpadded base64 (rooms v4+)


class StateResAlgorithm(Enum):
    V1 = 1
    V2 = 2
    V2_1 = 3  # room v12: iterative auth checks start from the empty state, conflicted subgraph


@dataclass(frozen=True)
class RoomVersion:
    identifier: str
    event_format: EventFormat
    state_res: StateResAlgorithm
    stable: bool = True
    enforce_key_validity: bool = False
    special_case_aliases_auth: bool = True
    strict_canonicaljson: bool = False
    limit_notifications_power_levels: bool = False
    knock_join_rule: bool = False
    restricted_join_rule: bool = False
    restricted_join_rule_fix: bool = False
    knock_restricted_join_rule: bool = False
    enforce_int_power_levels: bool = False
    # v11: redaction keeps more keys, create event has no "creator" (the sender is the creator)
    updated_redaction_rules: bool = False
    implicit_room_creator: bool = False
    # v12: room ID is derived from the create event, creators outrank every power level
    room_id_from_create_event: bool = False
    privileged_creators: bool = False


V1 = RoomVersion("1", EventFormat.V1, StateResAlgorithm.V1)
V2 = replace(V1, identifier="2", state_res=StateResAlgorithm.V2)
V3 = replace(V2, identifier="3", event_format=EventFormat.V2)
V4 = replace(V3, identifier="4", event_format=EventFormat.V3)
V5 = replace(V4, identifier="5", enforce_key_validity=True)
V6 = replace(
    V5,
    identifier="6",
    special_case_aliases_auth=False,
    strict_canonicaljson=True,
    limit_notifications_power_levels=True,
)
V7 = replace(V6, identifier="7", knock_join_rule=True)
V8 = replace(V7, identifier="8", restricted_join_rule=True)
V9 = replace(V8, identifier="9", restricted_join_rule_fix=True)
V10 = replace(V9, identifier="10", enforce_int_power_levels=True, knock_restricted_join_rule=True)
V11 = replace(V10, identifier="11", updated_redaction_rules=True, implicit_room_creator=True)
V12 = replace(
    V11,
    identifier="12",
    state_res=StateResAlgorithm.V2_1,
    room_id_from_create_event=True,
    privileged_creators=True,
)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    v.identifier: v for v in (V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12)
}

DEFAULT_ROOM_VERSION = "12"
