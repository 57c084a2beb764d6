"""Every endpoint with integer, boolean, enum or token parameters, swept with values out of range,
negative, in non-ASCII digits and of the wrong type: each answer is a 4xx with the spec's error code,
never a 500 (PostgreSQL refuses integers beyond BIGINT, so it runs on both engines).

`SWEEP` says, per route of the route table, which parameters are typed and how; `UNTYPED` lists the
routes without any. A route in neither fails `test_every_route_is_classified`, and
`SPEC_TYPED_PARAMS` (the typed parameters the spec's OpenAPI gives the routes served here) must all
be swept, so a new endpoint or parameter cannot silently escape the sweep.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from hs.api.params import INT64_MAX
from hs.roles.routes import all_routes
from tests.harness import Client, ok, user

BACKUP_ALG = "m.megolm_backup.v1.curve25519-aes-sha2"

# Values: (category, value). "range" values are well-typed but refused (or clamped, for limits);
# "type" values are of the wrong type.
QUERY_INT = [("range", "18446744073709551615"), ("range", str(INT64_MAX + 1)), ("range", "-1"),
             ("type", "²"), ("type", "١٢"), ("type", "1.5"), ("type", " 1"), ("type", "1_0"), ("type", "0x10"),
             ("type", "abc")]
QUERY_LIMIT_HUGE = "18446744073709551616"
QUERY_TOKEN = ["²", "١٢", "-1", "99999999999999999999", "s99999999999999999999", "s²", "s١_0",
               "t1-99999999999999999999", "t١-1", "r99999999999999999999", "n²", "p-1", "x_y_z", "é"]
QUERY_ENUM = ["maybe", "²", "B", "TRUE"]
QUERY_BOOL = ["maybe", "1", "TRUE", "²"]
BODY_INT = [("range", 2 ** 64 - 1), ("range", 2 ** 63), ("range", -1), ("type", 1.5), ("type", "1"),
            ("type", True), ("type", [1]), ("type", {})]
BODY_ENUM = [("range", "unknown"), ("type", 5), ("type", True), ("type", {}), ("type", [])]
BODY_BOOL = [("type", "true"), ("type", 1), ("type", {}), ("type", [])]
BODY_NUMBER = [("type", "1"), ("type", True), ("type", {}), ("type", [])]


@dataclass(frozen=True)
class P:
    """A typed parameter: where it is, its name (a dotted path into the body), its kind, and the
    errcode for a well-typed value out of range (`code`) and for a wrongly typed one (`type_code`)."""

    where: str  # query | path | body
    name: str
    kind: str  # int | limit | token | enum | bool | number | id (a path ID: unknown is 404) | str (any string)
    code: str = ""
    type_code: str = ""
    status: int = 400

    def codes(self, category: str) -> tuple[int, str]:
        default = "M_BAD_JSON" if self.where == "body" else "M_INVALID_PARAM"
        if self.kind == "id":
            return 404, "M_NOT_FOUND"
        if category == "type":
            return self.status, self.type_code or self.code or default
        return self.status, self.code or default


@dataclass(frozen=True)
class Case:
    params: list[P]
    query: dict[str, str] = field(default_factory=dict)
    body: Any = None


def _keys_body(shape: str) -> Any:
    data = {"first_message_index": 0, "forwarded_count": 0, "is_verified": False, "session_data": {}}
    if shape == "session":
        return data
    if shape == "room":
        return {"sessions": {"S1": data}}
    return {"rooms": {"{roomId}": {"sessions": {"S1": data}}}}


def _key_params(prefix: str) -> list[P]:
    return [P("query", "version", "id"), P("body", f"{prefix}first_message_index", "int"),
            P("body", f"{prefix}forwarded_count", "int"), P("body", f"{prefix}is_verified", "bool")]


_ROOM_KEY = "rooms.{roomId}.sessions.S1."
_RELATIONS = [P("query", "from", "token"), P("query", "to", "token"), P("query", "limit", "limit"),
              P("query", "dir", "enum"), P("query", "recurse", "bool")]
_SEARCH = {"search_categories": {"room_events": {"search_term": "hello"}}}
_RE = "search_categories.room_events."

SWEEP: dict[tuple[str, str], Case] = {
    ("GET", "/rooms/{roomId}/timestamp_to_event"): Case(
        [P("query", "ts", "int"), P("query", "dir", "enum")], {"ts": "0", "dir": "f"}),
    ("GET", "/rooms/{roomId}/messages"): Case(
        [P("query", "from", "token"), P("query", "to", "token"), P("query", "dir", "enum"),
         P("query", "limit", "limit")], {"dir": "b"}),
    ("GET", "/rooms/{roomId}/context/{eventId}"): Case([P("query", "limit", "limit")]),
    ("GET", "/rooms/{roomId}/members"): Case(
        [P("query", "at", "token"), P("query", "membership", "enum"), P("query", "not_membership", "enum")]),
    ("GET", "/rooms/{roomId}/state/{eventType}"): Case([P("query", "format", "enum")]),
    ("GET", "/rooms/{roomId}/state/{eventType}/{stateKey:.*}"): Case([P("query", "format", "enum")]),
    ("GET", "/publicRooms"): Case([P("query", "limit", "limit"), P("query", "since", "token")]),
    ("POST", "/publicRooms"): Case(
        [P("body", "limit", "limit"), P("body", "since", "token", code="M_INVALID_PARAM", type_code="M_BAD_JSON"),
         P("body", "include_all_networks", "bool")], body={}),
    ("GET", "/sync"): Case(
        [P("query", "since", "token"), P("query", "full_state", "bool"), P("query", "set_presence", "enum"),
         P("query", "timeout", "limit"), P("query", "use_state_after", "bool"), P("query", "filter", "int")]),
    ("GET", "/user/{userId}/filter/{filterId}"): Case([P("path", "filterId", "id")]),
    # (`from` given: the clamped huge `timeout` then answers at once, events being there already.)
    ("GET", "/events"): Case([P("query", "from", "token"), P("query", "timeout", "limit"),
                              P("query", "limit", "limit")], query={"from": "s0", "timeout": "0"}),
    ("GET", "/initialSync"): Case([P("query", "limit", "limit"), P("query", "archived", "bool")]),
    ("GET", "/rooms/{roomId}/initialSync"): Case([P("query", "limit", "limit")]),
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"): Case(
        [P("query", "timeout", "limit")], body={}),
    ("POST", "/_matrix/client/v4/sync"): Case([P("body", "timeout", "limit")], body={}),
    # (`algorithm`: any string, as Synapse takes it; the spec's enum is not enforced: test_spec_strictness.)
    ("POST", "/room_keys/version"): Case([P("body", "algorithm", "str")], body={"algorithm": BACKUP_ALG, "auth_data": {}}),
    ("GET", "/room_keys/version/{version}"): Case([P("path", "version", "id")]),
    ("PUT", "/room_keys/version/{version}"): Case(
        [P("path", "version", "id"), P("body", "algorithm", "str")], body={"algorithm": BACKUP_ALG, "auth_data": {}}),
    ("DELETE", "/room_keys/version/{version}"): Case([P("path", "version", "id")]),
    ("GET", "/room_keys/keys"): Case([P("query", "version", "id")], {"version": "1"}),
    ("DELETE", "/room_keys/keys"): Case([P("query", "version", "id")], {"version": "1"}),
    ("GET", "/room_keys/keys/{roomId}"): Case([P("query", "version", "id")], {"version": "1"}),
    ("DELETE", "/room_keys/keys/{roomId}"): Case([P("query", "version", "id")], {"version": "1"}),
    ("GET", "/room_keys/keys/{roomId}/{sessionId}"): Case([P("query", "version", "id")], {"version": "1"}),
    ("DELETE", "/room_keys/keys/{roomId}/{sessionId}"): Case([P("query", "version", "id")], {"version": "1"}),
    ("PUT", "/room_keys/keys"): Case(_key_params(_ROOM_KEY), {"version": "1"}, _keys_body("all")),
    ("PUT", "/room_keys/keys/{roomId}"): Case(_key_params("sessions.S1."), {"version": "1"}, _keys_body("room")),
    ("PUT", "/room_keys/keys/{roomId}/{sessionId}"): Case(_key_params(""), {"version": "1"},
                                                          _keys_body("session")),
    ("POST", "/keys/query"): Case([P("body", "timeout", "limit")], body={"device_keys": {}}),
    ("POST", "/keys/claim"): Case([P("body", "timeout", "limit")], body={"one_time_keys": {}}),
    ("GET", "/keys/changes"): Case([P("query", "from", "token"), P("query", "to", "token")],
                                   {"from": "s0", "to": "s0"}),
    ("GET", "/mutual_rooms"): Case([P("query", "from", "token")], {"user_id": "{bob}"}),
    ("GET", "/notifications"): Case(
        [P("query", "from", "token"), P("query", "limit", "limit"), P("query", "only", "enum")]),
    ("GET", "/rooms/{roomId}/relations/{eventId}"): Case(_RELATIONS),
    ("GET", "/rooms/{roomId}/relations/{eventId}/{relType}"): Case(_RELATIONS),
    ("GET", "/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}"): Case(_RELATIONS),
    ("GET", "/rooms/{roomId}/threads"): Case(
        [P("query", "include", "enum"), P("query", "limit", "limit"), P("query", "from", "token")]),
    ("GET", "/rooms/{roomId}/hierarchy"): Case(
        [P("query", "suggested_only", "bool"), P("query", "limit", "limit"), P("query", "max_depth", "limit"),
         P("query", "from", "token")]),
    ("POST", "/search"): Case(
        [P("query", "next_batch", "token"), P("body", _RE + "order_by", "enum"), P("body", _RE + "keys", "keys"),
         P("body", _RE + "event_context.before_limit", "limit"),
         P("body", _RE + "event_context.after_limit", "limit"),
         P("body", _RE + "event_context.include_profile", "bool"), P("body", _RE + "include_state", "bool"),
         P("body", _RE + "filter.limit", "limit")], body=_SEARCH),
    ("PUT", "/rooms/{roomId}/typing/{userId}"): Case(
        [P("body", "typing", "bool"), P("body", "timeout", "limit", code="M_INVALID_PARAM", type_code="M_BAD_JSON")],
        body={"typing": True, "timeout": 1000}),
    ("PUT", "/presence/{userId}/status"): Case(
        [P("body", "presence", "enum", code="M_INVALID_PARAM", type_code="M_INVALID_PARAM")],
        body={"presence": "online"}),
    ("POST", "/user_directory/search"): Case([P("body", "limit", "limit")], body={"search_term": "x"}),
    ("PUT", "/user/{userId}/rooms/{roomId}/tags/{tag}"): Case([P("body", "order", "number")], body={"order": 0.5}),
    ("POST", "/register"): Case(
        [P("query", "kind", "enum"), P("body", "inhibit_login", "bool"), P("body", "refresh_token", "bool")],
        body={"username": "sweeper", "password": "a-long-password-1"}),
    ("POST", "/login"): Case([P("body", "refresh_token", "bool")], body={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "password123"}),
    ("POST", "/account/password"): Case([P("body", "logout_devices", "bool")],
                                        body={"new_password": "a-new-long-password-1"}),
    ("POST", "/account/deactivate"): Case([P("body", "erase", "bool")], body={}),
    ("POST", "/createRoom"): Case(
        [P("body", "visibility", "enum"), P("body", "preset", "enum"), P("body", "is_direct", "bool")], body={}),
    ("PUT", "/directory/list/room/{roomId}"): Case(
        [P("body", "visibility", "enum", code="M_INVALID_PARAM", type_code="M_BAD_JSON")],
        body={"visibility": "private"}),
    ("POST", "/pushers/set"): Case([P("body", "append", "bool")], body={
        "kind": "http", "app_id": "a", "pushkey": "k", "app_display_name": "x", "device_display_name": "d",
        "lang": "en", "data": {"url": "https://push.example.org/_matrix/push/v1/notify"}}),
    ("POST", "/rooms/{roomId}/receipt/{receiptType}/{eventId}"): Case(
        [P("path", "receiptType", "enum")], body={}),
    ("GET", "/pushrules/{scope}/{kind}/"): Case([P("path", "kind", "enum", code="M_UNRECOGNIZED")]),
    ("GET", "/pushrules/{scope}/{kind}/{ruleId}"): Case([P("path", "kind", "enum", code="M_UNRECOGNIZED")]),
    ("DELETE", "/pushrules/{scope}/{kind}/{ruleId}"): Case([P("path", "kind", "enum", code="M_UNRECOGNIZED")]),
    ("PUT", "/pushrules/{scope}/{kind}/{ruleId}"): Case([P("path", "kind", "enum", code="M_UNRECOGNIZED")],
                                                        body={"actions": []}),
    ("GET", "/pushrules/{scope}/{kind}/{ruleId}/{attr}"): Case(
        [P("path", "kind", "enum", code="M_UNRECOGNIZED")]),
    ("PUT", "/pushrules/{scope}/{kind}/{ruleId}/{attr}"): Case(
        [P("path", "kind", "enum", code="M_UNRECOGNIZED"), P("body", "enabled", "bool")], body={"enabled": True}),
    ("GET", "/_synapse/admin/v1/event_reports"): Case(
        [P("query", "from", "int"), P("query", "limit", "limit"), P("query", "dir", "enum")]),
    ("GET", "/_synapse/admin/v1/federation/destinations"): Case(
        [P("query", "from", "int"), P("query", "limit", "limit"), P("query", "dir", "enum"),
         P("query", "order_by", "enum")]),
    ("GET", "/_synapse/admin/v1/rooms"): Case(
        [P("query", "from", "int"), P("query", "limit", "limit"), P("query", "dir", "enum"),
         P("query", "order_by", "enum")]),
    ("GET", "/_synapse/admin/v2/users"): Case(
        [P("query", "from", "int"), P("query", "limit", "limit"), P("query", "dir", "enum"),
         P("query", "order_by", "enum"), P("query", "guests", "bool"), P("query", "admins", "bool"),
         P("query", "deactivated", "bool"), P("query", "locked", "bool")]),
    ("GET", "/_synapse/admin/v3/users"): Case(
        [P("query", "from", "int"), P("query", "limit", "limit"), P("query", "dir", "enum"),
         P("query", "order_by", "enum"), P("query", "guests", "bool"), P("query", "admins", "bool"),
         P("query", "deactivated", "bool"), P("query", "locked", "bool")]),
    ("GET", "/_synapse/admin/v1/statistics/users/media"): Case(
        [P("query", "from", "int"), P("query", "limit", "limit"), P("query", "dir", "enum"),
         P("query", "order_by", "enum"), P("query", "from_ts", "int"), P("query", "until_ts", "int")]),
    ("POST", "/_synapse/admin/v1/reset_password/{userId}"): Case(
        [P("body", "logout_devices", "bool")], body={"new_password": "a-new-long-password-1"}),
    ("GET", "/_synapse/admin/v1/federation/destinations/{destination}/rooms"): Case(
        [P("query", "from", "int"), P("query", "limit", "limit"), P("query", "dir", "enum")]),
}

UNTYPED = {
    ("GET", "/_matrix/client/versions"), ("GET", "/capabilities"), ("GET", "/.well-known/matrix/client"),
    ("GET", "/register/available"), ("GET", "/register/m.login.registration_token/validity"),
    ("GET", "/login"), ("POST", "/logout"), ("POST", "/logout/all"), ("GET", "/account/whoami"),
    ("GET", "/devices"), ("GET", "/devices/{deviceId}"), ("PUT", "/devices/{deviceId}"),
    ("DELETE", "/devices/{deviceId}"), ("POST", "/delete_devices"),
    ("GET", "/_synapse/admin/v1/register"), ("POST", "/_synapse/admin/v1/register"),
    ("GET", "/profile/{userId}"), ("GET", "/profile/{userId}/displayname"), ("PUT", "/profile/{userId}/displayname"),
    ("DELETE", "/profile/{userId}/displayname"), ("GET", "/profile/{userId}/avatar_url"),
    ("PUT", "/profile/{userId}/avatar_url"), ("DELETE", "/profile/{userId}/avatar_url"),
    ("POST", "/join/{roomIdOrAlias}"), ("POST", "/knock/{roomIdOrAlias}"), ("POST", "/rooms/{roomId}/join"),
    ("POST", "/rooms/{roomId}/leave"), ("POST", "/rooms/{roomId}/invite"), ("POST", "/rooms/{roomId}/kick"),
    ("POST", "/rooms/{roomId}/ban"), ("POST", "/rooms/{roomId}/unban"), ("POST", "/rooms/{roomId}/forget"),
    ("GET", "/rooms/{roomId}/state"), ("GET", "/rooms/{roomId}/joined_members"), ("GET", "/joined_rooms"),
    ("PUT", "/rooms/{roomId}/send/{eventType}/{txnId}"), ("PUT", "/rooms/{roomId}/state/{eventType}"),
    ("PUT", "/rooms/{roomId}/state/{eventType}/{stateKey:.*}"), ("PUT", "/rooms/{roomId}/redact/{eventId}/{txnId}"),
    ("GET", "/rooms/{roomId}/event/{eventId}"), ("GET", "/events/{eventId}"),
    ("PUT", "/directory/room/{roomAlias}"), ("GET", "/directory/room/{roomAlias}"),
    ("DELETE", "/directory/room/{roomAlias}"), ("GET", "/rooms/{roomId}/aliases"),
    ("GET", "/directory/list/room/{roomId}"), ("POST", "/user/{userId}/filter"),
    ("GET", "/user/{userId}/account_data/{type}"), ("PUT", "/user/{userId}/account_data/{type}"),
    ("GET", "/user/{userId}/rooms/{roomId}/account_data/{type}"),
    ("PUT", "/user/{userId}/rooms/{roomId}/account_data/{type}"), ("GET", "/user/{userId}/rooms/{roomId}/tags"),
    ("DELETE", "/user/{userId}/rooms/{roomId}/tags/{tag}"), ("GET", "/presence/{userId}/status"),
    ("GET", "/voip/turnServer"), ("GET", "/account/3pid"), ("POST", "/account/3pid/email/requestToken"),
    ("POST", "/account/3pid/msisdn/requestToken"), ("POST", "/register/email/requestToken"),
    ("POST", "/register/msisdn/requestToken"), ("POST", "/account/password/email/requestToken"),
    ("POST", "/account/password/msisdn/requestToken"), ("GET", "/pushers"),
    ("POST", "/rooms/{roomId}/report/{eventId}"), ("POST", "/rooms/{roomId}/report"),
    ("POST", "/users/{userId}/report"), ("GET", "/room_summary/{roomIdOrAlias}"),
    ("POST", "/rooms/{roomId}/upgrade"), ("GET", "/thirdparty/protocols"), ("GET", "/thirdparty/protocol/{protocol}"),
    ("GET", "/thirdparty/location"), ("GET", "/thirdparty/location/{protocol}"), ("GET", "/thirdparty/user"),
    ("GET", "/thirdparty/user/{protocol}"), ("GET", "/admin/whois/{userId}"), ("POST", "/keys/upload"),
    ("POST", "/keys/upload/{deviceId}"), ("POST", "/keys/device_signing/upload"),
    ("POST", "/keys/signatures/upload"), ("GET", "/room_keys/version"), ("PUT", "/sendToDevice/{eventType}/{txnId}"),
    ("POST", "/rooms/{roomId}/read_markers"), ("GET", "/pushrules/"), ("GET", "/pushrules/{scope}/"),
    ("POST", "/user/{userId}/openid/request_token"),
    ("POST", "/appservice/{appserviceId}/ping"),
    ("PUT", "/directory/list/appservice/{networkId}/{roomId}"),
    ("DELETE", "/directory/list/appservice/{networkId}/{roomId}"),
    # Malformed push rule paths (400 M_UNRECOGNIZED, as Synapse), caught after the typed routes.
    ("GET", "/pushrules"), ("PUT", "/pushrules"), ("DELETE", "/pushrules"),
    ("GET", "/pushrules/{path:.*}"), ("PUT", "/pushrules/{path:.*}"), ("DELETE", "/pushrules/{path:.*}"),
    ("GET", "/_synapse/admin/v1/federation/destinations/{destination}"),
    # Rooms, history purges, registration tokens, server notices and the version (admin API).
    ("GET", "/_synapse/admin/v1/rooms/{roomId}"), ("GET", "/_synapse/admin/v1/rooms/{roomId}/members"),
    ("GET", "/_synapse/admin/v1/rooms/{roomId}/state"), ("GET", "/_synapse/admin/v1/rooms/{roomId}/block"),
    ("PUT", "/_synapse/admin/v1/rooms/{roomId}/block"), ("DELETE", "/_synapse/admin/v1/rooms/{roomId}"),
    ("DELETE", "/_synapse/admin/v2/rooms/{roomId}"), ("GET", "/_synapse/admin/v2/rooms/{roomId}/delete_status"),
    ("GET", "/_synapse/admin/v2/rooms/delete_status/{deleteId}"),
    ("POST", "/_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin"),
    ("POST", "/_synapse/admin/v1/purge_history/{roomId}"), ("POST", "/_synapse/admin/v1/purge_history/{roomId}/{eventId}"),
    ("GET", "/_synapse/admin/v1/purge_history_status/{purgeId}"),
    ("GET", "/_synapse/admin/v1/registration_tokens"), ("POST", "/_synapse/admin/v1/registration_tokens/new"),
    ("GET", "/_synapse/admin/v1/registration_tokens/{token}"), ("PUT", "/_synapse/admin/v1/registration_tokens/{token}"),
    ("DELETE", "/_synapse/admin/v1/registration_tokens/{token}"),
    ("POST", "/_synapse/admin/v1/send_server_notice"), ("PUT", "/_synapse/admin/v1/send_server_notice/{txnId}"),
    ("GET", "/_synapse/admin/v1/server_version"),
    ("GET", "/_synapse/admin/v2/users/{userId}"), ("PUT", "/_synapse/admin/v2/users/{userId}"),
    ("GET", "/_synapse/admin/v2/users/{userId}/devices"),
    ("DELETE", "/_synapse/admin/v2/users/{userId}/devices/{deviceId}"),
    ("POST", "/_synapse/admin/v1/deactivate/{userId}"), ("GET", "/_synapse/admin/v1/whois/{userId}"),
    ("GET", "/_synapse/admin/v1/users/{userId}/joined_rooms"),
    ("GET", "/_synapse/admin/v1/users/{userId}/admin"),
    ("PUT", "/_synapse/admin/v1/users/{userId}/admin"),
    ("POST", "/_synapse/admin/v1/users/{userId}/shadow_ban"),
    ("DELETE", "/_synapse/admin/v1/users/{userId}/shadow_ban"),
    ("POST", "/_synapse/admin/v1/users/{userId}/login"),
    ("GET", "/_synapse/admin/v2/users/{userId}/devices/{deviceId}"),
    ("PUT", "/_synapse/admin/v2/users/{userId}/devices/{deviceId}"),
    ("POST", "/_synapse/admin/v2/users/{userId}/delete_devices"),
    ("GET", "/_synapse/admin/v1/users/{userId}/memberships"),
    ("POST", "/_synapse/admin/v1/federation/destinations/{destination}/reset_connection"),
}

# The integer, boolean, enum and token parameters the spec's OpenAPI (client-server API) gives the
# endpoints served here, as (method, spec path): names, extracted from its path and query parameters
# (type integer, number or boolean, an enum, or a from/to/since/next_batch/version/at token) and its
# request bodies' top-level properties (likewise). Spec paths spell `{scope}` as `global` and `{attr}`
# as `enabled` / `actions`. When the server serves a new spec endpoint, add its typed parameters here.
SPEC_TYPED_PARAMS: dict[tuple[str, str], set[str]] = {
    ("POST", "/account/deactivate"): {"erase"},
    ("POST", "/createRoom"): {"visibility", "preset", "is_direct"},
    ("GET", "/rooms/{roomId}/context/{eventId}"): {"limit"},
    ("GET", "/user/{userId}/filter/{filterId}"): {"filterId"},
    ("POST", "/room_keys/version"): {"algorithm"},
    ("GET", "/room_keys/version/{version}"): {"version"},
    ("PUT", "/room_keys/version/{version}"): {"version", "algorithm"},
    ("DELETE", "/room_keys/version/{version}"): {"version"},
    ("PUT", "/room_keys/keys/{roomId}/{sessionId}"): {"version", "first_message_index", "forwarded_count",
                                                      "is_verified"},
    ("GET", "/room_keys/keys/{roomId}/{sessionId}"): {"version"},
    ("DELETE", "/room_keys/keys/{roomId}/{sessionId}"): {"version"},
    ("PUT", "/room_keys/keys/{roomId}"): {"version"},
    ("GET", "/room_keys/keys/{roomId}"): {"version"},
    ("DELETE", "/room_keys/keys/{roomId}"): {"version"},
    ("PUT", "/room_keys/keys"): {"version"},
    ("GET", "/room_keys/keys"): {"version"},
    ("DELETE", "/room_keys/keys"): {"version"},
    ("POST", "/keys/query"): {"timeout"},
    ("POST", "/keys/claim"): {"timeout"},
    ("GET", "/keys/changes"): {"from", "to"},
    ("PUT", "/directory/list/room/{roomId}"): {"visibility"},
    ("GET", "/publicRooms"): {"limit", "since"},
    ("POST", "/publicRooms"): {"limit", "include_all_networks"},
    ("POST", "/login"): {"refresh_token"},
    ("GET", "/rooms/{roomId}/messages"): {"from", "to", "dir", "limit"},
    ("GET", "/mutual_rooms"): {"from"},
    ("GET", "/notifications"): {"from", "limit"},
    ("POST", "/account/password"): {"logout_devices"},
    ("PUT", "/presence/{userId}/status"): {"presence"},
    ("POST", "/pushers/set"): {"append"},
    ("GET", "/pushrules/global/{kind}/{ruleId}"): {"kind"},
    ("DELETE", "/pushrules/global/{kind}/{ruleId}"): {"kind"},
    ("PUT", "/pushrules/global/{kind}/{ruleId}"): {"kind"},
    ("GET", "/pushrules/global/{kind}/{ruleId}/enabled"): {"kind"},
    ("PUT", "/pushrules/global/{kind}/{ruleId}/enabled"): {"kind", "enabled"},
    ("GET", "/pushrules/global/{kind}/{ruleId}/actions"): {"kind"},
    ("PUT", "/pushrules/global/{kind}/{ruleId}/actions"): {"kind"},
    ("POST", "/rooms/{roomId}/receipt/{receiptType}/{eventId}"): {"receiptType"},
    ("POST", "/register"): {"kind", "inhibit_login", "refresh_token"},
    ("GET", "/rooms/{roomId}/relations/{eventId}"): {"from", "to", "limit", "dir", "recurse"},
    ("GET", "/rooms/{roomId}/relations/{eventId}/{relType}"): {"from", "to", "limit", "dir", "recurse"},
    ("GET", "/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}"): {"from", "to", "limit", "dir",
                                                                          "recurse"},
    ("GET", "/rooms/{roomId}/timestamp_to_event"): {"ts", "dir"},
    ("GET", "/rooms/{roomId}/state/{eventType}/{stateKey}"): {"format"},
    ("GET", "/rooms/{roomId}/members"): {"at", "membership", "not_membership"},
    ("POST", "/search"): {"next_batch"},
    ("GET", "/rooms/{roomId}/hierarchy"): {"suggested_only", "limit", "max_depth", "from"},
    ("GET", "/sync"): {"since", "full_state", "set_presence", "timeout", "use_state_after"},
    ("GET", "/events"): {"from", "timeout"},
    ("GET", "/initialSync"): {"limit", "archived"},
    ("PUT", "/user/{userId}/rooms/{roomId}/tags/{tag}"): {"order"},
    ("GET", "/rooms/{roomId}/threads"): {"include", "limit", "from"},
    ("PUT", "/rooms/{roomId}/typing/{userId}"): {"typing", "timeout"},
    ("POST", "/user_directory/search"): {"limit"},
}


def _spec_paths(method: str, path: str) -> list[tuple[str, str]]:
    path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path).replace("/pushrules/{scope}/", "/pushrules/global/")
    if path.endswith("/{attr}"):
        return [(method, path.replace("{attr}", attr)) for attr in ("enabled", "actions")]
    return [(method, path)]


def test_every_route_is_classified() -> None:
    routes = {(r.method, r.path) for r in all_routes() if r.resource == "client"}
    unclassified = routes - set(SWEEP) - UNTYPED
    assert not unclassified, f"add these routes to SWEEP (typed parameters) or UNTYPED: {sorted(unclassified)}"
    assert not set(SWEEP) & UNTYPED
    assert set(SWEEP) | UNTYPED <= routes, sorted((set(SWEEP) | UNTYPED) - routes)
    served_spec = {}
    for method, path in routes:
        for spec_key in _spec_paths(method, path):
            served_spec[spec_key] = (method, path)
    for spec_key, names in SPEC_TYPED_PARAMS.items():
        assert spec_key in served_spec, spec_key
        route = served_spec[spec_key]
        swept = {p.name.rsplit(".", 1)[-1] for p in SWEEP[route].params} if route in SWEEP else set()
        assert names <= swept, (route, names - swept)


def test_handlers_read_parameters_only_through_params() -> None:
    """No handler reads a query parameter or converts a number itself: hs/api/params.py does."""
    for source in sorted((Path(__file__).parents[2] / "hs" / "api" / "client").glob("*.py")):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "query":
                raise AssertionError(f"{source.name}:{node.lineno} reads request.query directly")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "int" and any(
                    isinstance(n, ast.Name) and n.id in ("request", "body") for a in node.args for n in ast.walk(a)):
                raise AssertionError(f"{source.name}:{node.lineno} converts a request's value with int()")


# -- the sweep ------------------------------------------------------------------------------------------------
@dataclass
class World:
    alice: Client
    bob: Client
    values: dict[str, str]

    def fill(self, text: str) -> str:
        for key, value in self.values.items():
            text = text.replace("{" + key + "}", value)
        return text

    def fill_body(self, body: Any) -> Any:
        if isinstance(body, dict):
            return {self.fill(k): self.fill_body(v) for k, v in body.items()}
        if isinstance(body, list):
            return [self.fill_body(v) for v in body]
        return self.fill(body) if isinstance(body, str) else body


async def _world(server: Any) -> World:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    await server.hs.db.execute("UPDATE users SET admin = 1 WHERE user_id = $1", alice.user_id)
    room_id = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{quote(room_id)}")
    event_id = await alice.send_message(room_id, "hello")
    await ok(alice, "POST", "/room_keys/version", {"algorithm": BACKUP_ALG, "auth_data": {}})
    filter_id = (await ok(alice, "POST", f"/user/{alice.user_id}/filter", {}))["filter_id"]
    # A destination the federation destinations admin API knows (else its rooms are 404 whatever the query).
    await server.hs.db.execute("INSERT INTO federation_destinations (destination) VALUES ('remote.example')")
    return World(alice, bob, {
        "roomId": room_id, "eventId": event_id, "userId": str(alice.user_id), "bob": str(bob.user_id),
        "eventType": "m.room.create", "stateKey:.*": "", "relType": "m.thread", "sessionId": "S1", "version": "1",
        "filterId": str(filter_id), "scope": "global", "kind": "override", "ruleId": ".m.rule.master",
        "attr": "enabled", "receiptType": "m.read", "tag": "u.work", "destination": "remote.example"})


def _url(world: World, method: str, path: str, path_values: dict[str, str]) -> str:
    route = next(r for r in all_routes() if (r.method, r.path) == (method, path))
    full = route.full_paths()[0]
    for key, value in path_values.items():
        full = full.replace("{" + key + "}", quote(value, safe=""))
    return world.fill(full.replace("{roomId}", quote(world.values["roomId"])))


def _set(body: Any, dotted: str, value: Any, world: World) -> Any:
    body = world.fill_body(body)
    target = body
    parts = [world.fill(p) for p in dotted.split(".")]
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value
    return body


def _bad_values(p: P) -> list[tuple[str, Any]]:
    if p.where == "body":
        return {"int": BODY_INT, "limit": [v for v in BODY_INT if v[0] == "type" or v[1] == -1],
                "token": [("range", v) for v in QUERY_TOKEN] + [("type", 5)], "enum": BODY_ENUM,
                "bool": BODY_BOOL, "number": BODY_NUMBER, "str": [("type", 5), ("type", ["x"])],
                "keys": [("type", [{}]), ("type", [5]), ("type", "content.body"), ("range", ["content.url"]),
                         ("range", [])]}[p.kind]
    return {"int": QUERY_INT, "id": QUERY_INT + [("range", v) for v in QUERY_TOKEN],
            "limit": [v for v in QUERY_INT if v[0] == "type" or v[1] == "-1"],
            "token": [("range", v) for v in QUERY_TOKEN], "enum": [("range", v) for v in QUERY_ENUM],
            "bool": [("range", v) for v in QUERY_BOOL]}[p.kind]


async def _call(world: World, method: str, path: str, case: Case, p: P, value: Any) -> tuple[int, Any]:
    query = {k: world.fill(v) for k, v in case.query.items()}
    body = world.fill_body(case.body)
    path_values: dict[str, str] = {}
    if p.where == "query":
        query[p.name] = value
    elif p.where == "path":
        path_values[p.name] = value
    else:
        body = _set(case.body if case.body is not None else {}, p.name, value, world)
    client = world.alice
    status, data = await client.request(method, _url(world, method, path, path_values), body,
                                        params=query or None)
    return status, data


@pytest.mark.timeout(600)
async def test_typed_parameters_out_of_range_or_malformed_are_refused(server: Any) -> None:
    world = await _world(server)
    failures = []
    for (method, path), case in SWEEP.items():
        if path in ("/account/deactivate",):
            continue  # swept last: a slip would deactivate the sweeping user
        for p in case.params:
            for category, value in _bad_values(p):
                status, data = await _call(world, method, path, case, p, value)
                want = p.codes(category)
                got = (status, data.get("errcode") if isinstance(data, dict) else data)
                if got != want:
                    failures.append(f"{method} {path} {p.where}:{p.name}={value!r}: {got} != {want}")
    status, data = await _call(world, "POST", "/account/deactivate", SWEEP[("POST", "/account/deactivate")],
                               P("body", "erase", "bool"), "yes")
    if (status, data.get("errcode")) != (400, "M_BAD_JSON"):
        failures.append(f"POST /account/deactivate erase='yes': {status} {data}")
    assert not failures, "\n".join(failures)


async def test_limits_beyond_64_bits_are_clamped(server: Any) -> None:
    """Limits and timeouts are clamped as Synapse clamps them: a huge one is the endpoint's maximum."""
    world = await _world(server)
    failures = []
    for (method, path), case in SWEEP.items():
        for p in case.params:
            if p.kind != "limit" or method != "GET":
                continue
            value = QUERY_LIMIT_HUGE
            status, data = await _call(world, method, path, case, p, value)
            if status != 200:
                failures.append(f"{method} {path} {p.name}={value}: {status} {data}")
    for body_case in [("POST", "/publicRooms"), ("POST", "/user_directory/search"), ("POST", "/keys/query"),
                      ("POST", "/keys/claim"), ("POST", "/search"), ("PUT", "/rooms/{roomId}/typing/{userId}")]:
        case = SWEEP[body_case]
        for p in case.params:
            if p.kind == "limit":
                # The largest JSON integer orjson reads as one (beyond it, a float: M_BAD_JSON).
                status, data = await _call(world, *body_case, case, p, 2 ** 64 - 1)
                if status != 200:
                    failures.append(f"{body_case} {p.name}=2**64-1: {status} {data}")
    assert not failures, "\n".join(failures)


async def test_unhashable_values_where_strings_are_expected(server: Any) -> None:
    """A JSON object or list where a string belongs is M_BAD_JSON, not a TypeError's 500."""
    alice = await user(server, "alice")
    for method, path, body in [
            ("POST", "/register", {"auth": {"type": {}}}),
            ("POST", "/delete_devices", {"devices": [], "auth": {"type": {}}}),
            ("POST", "/account/password", {"new_password": "a-new-long-password-1", "auth": {"type": []}}),
            ("POST", "/search", {"search_categories": {"room_events": {"search_term": "x", "keys": [{}]}}})]:
        status, data = await alice.request(method, path, body)
        assert (status, data["errcode"]) == (400, "M_BAD_JSON"), (path, data)
