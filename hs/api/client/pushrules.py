"""Push rules: GET /pushrules/ (and narrower paths), PUT/DELETE /pushrules/global/{kind}/{ruleId},
GET/PUT .../enabled and .../actions. The logic lives in `hs.services.push_rules.PushRulesService`.

Reads are served by any instance with the "pushrules" group; writes are forwarded to the push_rules
stream's writer (main by default), like the other stream groups (hs/roles/routes.py STREAM_GROUPS).
"""

from __future__ import annotations

from aiohttp import web

from hs.api.base import CLIENT_V3_V1, HandlerResult, Route, get_hs, get_requester, parse_json
from hs.api.params import query_str
from hs.errors import bad_json, unrecognized
from hs.services.push_rules import check_actions, check_kind

READ_GROUP = "pushrules"
# The same group: a proxy routes by path only, so one path must not be split over two groups.
WRITE_GROUP = "pushrules"
ATTRS = ("enabled", "actions")


async def get_all(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    return 200, {"global": await hs.push_rules.ruleset(requester.user_id)}


async def get_scope(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    if request.match_info["scope"] != "global":
        raise unrecognized("Push rules scope must be 'global'")
    return 200, await hs.push_rules.ruleset(requester.user_id)


async def get_kind(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    kind = request.match_info["kind"]
    check_kind(request.match_info["scope"], kind)
    return 200, (await hs.push_rules.ruleset(requester.user_id))[kind]


def _path(request: web.Request) -> tuple[str, str]:
    kind = request.match_info["kind"]
    check_kind(request.match_info["scope"], kind)
    return kind, request.match_info["ruleId"]


async def get_rule(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    kind, rule_id = _path(request)
    return 200, await hs.push_rules.get_rule(requester.user_id, kind, rule_id)


async def put_rule(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    kind, rule_id = _path(request)
    body = await parse_json(request)
    await hs.push_rules.put_rule(requester.user_id, kind, rule_id, body,
                                 query_str(request, "before"), query_str(request, "after"))
    return 200, {}


async def delete_rule(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    kind, rule_id = _path(request)
    await hs.push_rules.delete_rule(requester.user_id, kind, rule_id)
    return 200, {}


def _attr(request: web.Request) -> str:
    attr = request.match_info["attr"]
    if attr not in ATTRS:
        raise unrecognized(f"Unknown push rule attribute {attr!r}")
    return attr


async def get_attr(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    kind, rule_id = _path(request)
    attr = _attr(request)
    rule = await hs.push_rules.get_rule(requester.user_id, kind, rule_id)
    return 200, {attr: rule[attr]}


async def put_attr(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    kind, rule_id = _path(request)
    attr = _attr(request)
    body = await parse_json(request)
    if attr == "enabled":
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            raise bad_json("'enabled' must be a boolean")
        await hs.push_rules.set_enabled(requester.user_id, kind, rule_id, enabled)
    else:
        if "actions" not in body:
            raise bad_json("'actions' is required")
        await hs.push_rules.set_actions(requester.user_id, kind, rule_id, check_actions(body["actions"]))
    return 200, {}


async def malformed_path(request: web.Request) -> HandlerResult:
    """A /pushrules path of no known shape (no trailing slash, a missing or empty rule ID, an extra
    segment): 400 M_UNRECOGNIZED, as Synapse answers (and as an unknown scope or kind is answered
    here), not the router's 404/405. Only after the access token is checked, as everywhere else."""
    await get_requester(request)
    raise unrecognized("Unrecognised push rules path")


_RULE = "/pushrules/{scope}/{kind}/{ruleId}"
# Last, so that only what no route above matches lands here (aiohttp tries a prefix's routes in order).
_MALFORMED = [Route(method, path, malformed_path, READ_GROUP if method == "GET" else WRITE_GROUP, CLIENT_V3_V1)
              for method in ("GET", "PUT", "DELETE") for path in ("/pushrules", "/pushrules/{path:.*}")]
ROUTES: list[Route] = [
    Route("GET", "/pushrules/", get_all, READ_GROUP, CLIENT_V3_V1),
    Route("GET", "/pushrules/{scope}/", get_scope, READ_GROUP, CLIENT_V3_V1),
    Route("GET", "/pushrules/{scope}/{kind}/", get_kind, READ_GROUP, CLIENT_V3_V1),
    Route("GET", _RULE, get_rule, READ_GROUP, CLIENT_V3_V1),
    Route("GET", _RULE + "/{attr}", get_attr, READ_GROUP, CLIENT_V3_V1),
    Route("PUT", _RULE, put_rule, WRITE_GROUP, CLIENT_V3_V1),
    Route("DELETE", _RULE, delete_rule, WRITE_GROUP, CLIENT_V3_V1),
    Route("PUT", _RULE + "/{attr}", put_attr, WRITE_GROUP, CLIENT_V3_V1),
    *_MALFORMED,
]
