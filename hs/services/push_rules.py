"""Push rules: the server-default rule set, users' own rules (CRUD), and evaluation of new events.

Rule order (client-server spec, "Push Rules"): override, content, room, sender, underride; within a
kind the user's own rules (most important first) come before the server defaults, except
`.m.rule.master`, which is always first. Besides the spec's current defaults, the legacy body-based
mention rules (`.m.rule.contains_display_name`, `.m.rule.roomnotif`, `.m.rule.contains_user_name`)
are included, as Synapse does; they are skipped for events with `m.mentions`.

`BulkPushEvaluator.compute_push_actions` runs for every batch of events an events writer persists,
and its rows commit with the events, so the /sync that returns an event also has the counts it caused:
each local joined member but the sender (and an invited local user) gets the event evaluated
against their rules; `notify` stores a push action, with the highlight tweak a highlighted one.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

from hs.db.stores.ignored_users import IgnoredUsersStore
from hs.db.stores.push import PushRow
from hs.errors import bad_request, not_found, unrecognized
from hs.events.auth import get_user_power_level
from hs.events.event import Event
from hs.services.push_evaluator import (
    CompiledRule,
    PushJob,
    RuleTemplate,
    compile_rules,
    evaluate_push,
    member_actions,
    rule_template,
)
from hs.util import KeyedLocks, LruCache

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.sync import SyncConfig
    from hs.streams.tokens import StreamToken

logger = logging.getLogger(__name__)
JsonDict = dict[str, Any]

KINDS = ("override", "content", "room", "sender", "underride")
MAIN_THREAD = "main"
MAX_THREAD_HOPS = 3
_SOUND = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT = {"set_tweak": "highlight"}


def _event_match(key: str, pattern: str) -> JsonDict:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def default_rules(user_id: str) -> dict[str, list[JsonDict]]:
    """The server-default rules for `user_id`, per kind, in priority order (master first)."""
    localpart = user_id[1:].split(":", 1)[0]

    def rule(rule_id: str, conditions: list[JsonDict], actions: list[Any], enabled: bool = True) -> JsonDict:
        return {"rule_id": rule_id, "default": True, "enabled": enabled, "conditions": conditions,
                "actions": actions}

    override = [
        rule(".m.rule.master", [], [], enabled=False),
        rule(".m.rule.suppress_notices", [_event_match("content.msgtype", "m.notice")], []),
        rule(".m.rule.invite_for_me", [_event_match("type", "m.room.member"),
                                       _event_match("content.membership", "invite"),
                                       _event_match("state_key", user_id)], ["notify", _SOUND]),
        rule(".m.rule.member_event", [_event_match("type", "m.room.member")], []),
        rule(".m.rule.is_user_mention", [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids",
                                          "value": user_id}], ["notify", _SOUND, _HIGHLIGHT]),
        rule(".m.rule.contains_display_name", [{"kind": "contains_display_name"}], ["notify", _SOUND, _HIGHLIGHT]),
        rule(".m.rule.is_room_mention", [{"kind": "event_property_is", "key": "content.m\\.mentions.room",
                                          "value": True},
                                         {"kind": "sender_notification_permission", "key": "room"}],
             ["notify", _HIGHLIGHT]),
        rule(".m.rule.roomnotif", [{"kind": "sender_notification_permission", "key": "room"},
                                   _event_match("content.body", "@room")], ["notify", _HIGHLIGHT]),
        rule(".m.rule.tombstone", [_event_match("type", "m.room.tombstone"), _event_match("state_key", "")],
             ["notify", _HIGHLIGHT]),
        rule(".m.rule.reaction", [_event_match("type", "m.reaction")], []),
        rule(".m.rule.room.server_acl", [_event_match("type", "m.room.server_acl"), _event_match("state_key", "")],
             []),
        rule(".m.rule.suppress_edits", [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type",
                                         "value": "m.replace"}], []),
    ]
    content = [{"rule_id": ".m.rule.contains_user_name", "default": True, "enabled": True, "pattern": localpart,
                "actions": ["notify", _SOUND, _HIGHLIGHT]}]
    one_to_one = {"kind": "room_member_count", "is": "2"}
    underride = [
        rule(".m.rule.call", [_event_match("type", "m.call.invite")],
             ["notify", {"set_tweak": "sound", "value": "ring"}]),
        rule(".m.rule.encrypted_room_one_to_one", [one_to_one, _event_match("type", "m.room.encrypted")],
             ["notify", _SOUND]),
        rule(".m.rule.room_one_to_one", [one_to_one, _event_match("type", "m.room.message")], ["notify", _SOUND]),
        rule(".m.rule.message", [_event_match("type", "m.room.message")], ["notify"]),
        rule(".m.rule.encrypted", [_event_match("type", "m.room.encrypted")], ["notify"]),
    ]
    return {"override": override, "content": content, "room": [], "sender": [], "underride": underride}


def _client_rule(kind: str, rule: JsonDict) -> JsonDict:
    """A rule as the API shows it: conditions for override/underride, pattern for content."""
    out: JsonDict = {"rule_id": rule["rule_id"], "default": bool(rule.get("default", False)),
                     "enabled": bool(rule.get("enabled", True)), "actions": list(rule.get("actions") or [])}
    if kind in ("override", "underride"):
        out["conditions"] = list(rule.get("conditions") or [])
    elif kind == "content":
        out["pattern"] = rule.get("pattern") or ""
    return out


def check_actions(actions: Any) -> list[Any]:
    if not isinstance(actions, list):
        raise bad_request("Invalid rule: 'actions' must be a list")
    for a in actions:
        if a in ("notify", "dont_notify", "coalesce"):
            continue
        if isinstance(a, dict) and isinstance(a.get("set_tweak"), str):
            continue
        raise bad_request(f"Invalid rule: unrecognised action {a!r}")
    return actions


def check_kind(scope: str, kind: str) -> None:
    if scope != "global":
        raise unrecognized("Push rules scope must be 'global'")
    if kind not in KINDS:
        raise unrecognized(f"Unknown push rule kind {kind!r}")


class PushRulesService:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.stream = hs.push_rules_stream
        self.store = self.stream.store
        self._cache: LruCache[str, dict[str, list[JsonDict]]] = LruCache(20000, name="services.push_rules.self._cache")
        self._eval_cache: LruCache[str, tuple[list[CompiledRule], RuleTemplate]] = LruCache(20000, name="services.push_rules.self._eval_cache")
        # Moves on every invalidation: rules read while one happened may predate the change they
        # announce, and are used but not cached (else a rule written during the read is lost until
        # the user's next change).
        self._version = 0
        self.stream.on_change.append(self._invalidate)
        # One user's read-modify-write changes (ordering within a kind) are serialised in the writer.
        self._locks = KeyedLocks()

    def _invalidate(self, users: list[str] | None) -> None:
        self._version += 1
        if users is None:
            self._cache.clear()
            self._eval_cache.clear()
            return
        for u in users:
            self._cache.pop(u)
            self._eval_cache.pop(u)

    # -- reading ---------------------------------------------------------------------------------------
    async def ruleset(self, user_id: str) -> dict[str, list[JsonDict]]:
        """The user's rules per kind in priority order, as the API shows them (a fresh copy)."""
        cached = self._cache.get(user_id)
        if cached is None:
            version = self._version
            cached = await self._load(user_id)
            if version == self._version:
                self._cache.set(user_id, cached)
        return copy.deepcopy(cached)

    async def _load(self, user_id: str) -> dict[str, list[JsonDict]]:
        defaults = default_rules(user_id)
        changes = await self.store.get_default_changes(user_id)
        own: dict[str, list[JsonDict]] = {k: [] for k in KINDS}
        for r in await self.store.get_user_rules(user_id):
            if r["kind"] in own:
                own[r["kind"]].append({**r, "default": False})
        out: dict[str, list[JsonDict]] = {}
        for kind in KINDS:
            base = []
            for d in defaults[kind]:
                change = changes.get((kind, d["rule_id"]))
                if change is not None:
                    d = dict(d)
                    if change["enabled"] is not None:
                        d["enabled"] = change["enabled"]
                    if change["actions"] is not None:
                        d["actions"] = change["actions"]
                base.append(d)
            if kind == "override":
                ordered = base[:1] + own[kind] + base[1:]
            else:
                ordered = own[kind] + base
            out[kind] = [_client_rule(kind, r) for r in ordered]
        return out

    async def evaluation_rules(self, user_id: str) -> tuple[list[CompiledRule], RuleTemplate]:
        """The user's compiled rules and their template (see `evaluate_member`), cached."""
        cached = self._eval_cache.get(user_id)
        if cached is None:
            version = self._version
            ruleset = await self.ruleset(user_id)
            compiled = compile_rules([(kind, rule) for kind in KINDS for rule in ruleset[kind]])
            cached = (compiled, rule_template(compiled, user_id))
            if version == self._version:
                self._eval_cache.set(user_id, cached)
        return cached

    async def get_rule(self, user_id: str, kind: str, rule_id: str) -> JsonDict:
        for rule in (await self.ruleset(user_id))[kind]:
            if rule["rule_id"] == rule_id:
                return rule
        raise not_found("Unknown push rule")

    # -- writing ---------------------------------------------------------------------------------------
    async def put_rule(self, user_id: str, kind: str, rule_id: str, body: JsonDict,
                       before: str | None, after: str | None) -> None:
        if rule_id.startswith("."):
            raise bad_request("cannot add new rule_ids that start with '.'")
        if not rule_id or "/" in rule_id or "\\" in rule_id:
            raise bad_request("rule_id may not be empty or contain slashes")
        actions = check_actions(body.get("actions"))
        rule: JsonDict = {"rule_id": rule_id, "actions": actions, "enabled": True}
        if kind in ("override", "underride"):
            conditions = body.get("conditions", [])
            if not isinstance(conditions, list) or not all(
                    isinstance(c, dict) and isinstance(c.get("kind"), str) for c in conditions):
                raise bad_request("Invalid rule: every condition needs a 'kind'")
            rule["conditions"] = conditions
        elif kind == "content":
            pattern = body.get("pattern")
            if not isinstance(pattern, str):
                raise bad_request("Invalid rule: content rules need a 'pattern'")
            rule["pattern"] = pattern
        for relative in (before, after):
            if relative is not None and relative.startswith("."):
                raise bad_request("before/after cannot refer to a server-default rule")
        async with self._locks.lock(user_id):
            await self._put_rule(user_id, kind, rule_id, rule, before, after)

    async def _put_rule(self, user_id: str, kind: str, rule_id: str, rule: JsonDict,
                        before: str | None, after: str | None) -> None:
        current = [r for r in await self.store.get_user_rules(user_id) if r["kind"] == kind]
        index = next((i for i, r in enumerate(current) if r["rule_id"] == rule_id), None)
        if index is not None:
            rule["enabled"] = current[index]["enabled"]
            del current[index]
        relative = before if before is not None else after
        if relative is not None:
            at = next((i for i, r in enumerate(current) if r["rule_id"] == relative), None)
            if at is None:
                raise bad_request(f"before/after rule not found: {relative}")
            current.insert(at if before is not None else at + 1, rule)
        elif index is not None:
            current.insert(index, rule)
        else:
            current.insert(0, rule)
        await self.stream.write(user_id, lambda pos: self.store.replace_kind(user_id, kind, current, pos))

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        deleted = await self.stream.write(user_id, lambda pos: self.store.delete_rule(user_id, kind, rule_id, pos))
        if not deleted:
            raise not_found("Unknown push rule")

    async def set_enabled(self, user_id: str, kind: str, rule_id: str, enabled: bool) -> None:
        await self._set_attr(user_id, kind, rule_id, enabled, None)

    async def set_actions(self, user_id: str, kind: str, rule_id: str, actions: list[Any]) -> None:
        await self._set_attr(user_id, kind, rule_id, None, actions)

    async def _set_attr(self, user_id: str, kind: str, rule_id: str, enabled: bool | None,
                        actions: list[Any] | None) -> None:
        rule = await self.get_rule(user_id, kind, rule_id)  # 404 for an unknown rule
        if rule["default"]:
            async def write_default(pos: int) -> bool:
                await self.store.set_default_rule_attr(user_id, kind, rule_id, enabled, actions, pos)
                return True

            await self.stream.write(user_id, write_default)
            return
        found = await self.stream.write(
            user_id, lambda pos: self.store.set_user_rule_attr(user_id, kind, rule_id, enabled, actions, pos))
        if not found:
            raise not_found("Unknown push rule")

    # -- /sync -----------------------------------------------------------------------------------------
    async def add_to_sync(self, config: SyncConfig, now: StreamToken, body: dict[str, Any]) -> bool:
        """`m.push_rules` in the global account data: always initially (and with full_state), then when
        the rules change."""
        if not config.filter.account_data.type_allowed("m.push_rules"):
            return False
        since = config.since
        if since is not None and not config.full_state:
            upto = now.get("push_rules")
            after = min(since.get("push_rules"), upto)
            if after >= upto:
                return False
            changed = await self.store.get_user_stream_id(config.user_id)
            if not after < changed <= upto:
                return False
        ruleset = await self.ruleset(config.user_id)
        body["account_data"]["events"].append({"type": "m.push_rules", "content": {"global": ruleset}})
        return since is not None and not config.full_state


class BulkPushEvaluator:
    """Evaluates newly persisted events for the local users in the room; stores push actions."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store
        self.ignore_index = IgnoredUsersStore(hs.db)
        # Per state group: (joined local+remote members, display names, auth map for power levels).
        self._facts: LruCache[int, tuple[list[str], dict[str, str | None], dict[Any, Event]]] = LruCache(2000, name="services.push_rules.self._facts")

    def is_mine(self, user_id: str) -> bool:
        return user_id.endswith(":" + self.hs.server_name)

    async def _room_facts(self, group: int | None) -> tuple[list[str], dict[str, str | None], dict[Any, Event]]:
        key = -1 if group is None else group
        cached = self._facts.get(key)
        if cached is not None:
            return cached
        state = await self.store.get_state_events_for_group(
            group, [("m.room.member", None), ("m.room.power_levels", ""), ("m.room.create", "")])
        joined: list[str] = []
        names: dict[str, str | None] = {}
        auth: dict[Any, Event] = {}
        for (etype, skey), ev in state.items():
            if etype == "m.room.member":
                if ev.membership == "join":
                    joined.append(skey)
                    name = ev.content.get("displayname")
                    names[skey] = name if isinstance(name, str) else None
            else:
                auth[(etype, skey)] = ev
        facts = (joined, names, auth)
        self._facts.set(key, facts)
        return facts

    async def thread_of(self, ev: Event) -> str:
        """The thread an event is in: a thread root's ID, or `main` (relations followed up to 3 hops)."""
        content = ev.content
        for _ in range(MAX_THREAD_HOPS):
            rel = content.get("m.relates_to") if isinstance(content, dict) else None
            if not isinstance(rel, dict):
                return MAIN_THREAD
            rel_type, parent_id = rel.get("rel_type"), rel.get("event_id")
            if not isinstance(rel_type, str) or not isinstance(parent_id, str):
                return MAIN_THREAD
            if rel_type == "m.thread":
                return parent_id
            parent = await self.store.get_event(parent_id)
            if parent is None or parent.room_id != ev.room_id:
                return MAIN_THREAD
            content = parent.content
        return MAIN_THREAD

    async def compute_push_actions(self, events: list[Event]) -> list[PushRow]:
        """Who each event (positions assigned) notifies: (user, room, position, thread, event ID,
        highlight) rows for the persister to store with the events."""
        return evaluate_push(await self.prepare_push(events))

    async def actions_for(self, event: Event, user_id: str) -> list[Any] | None:
        """The user's push rule actions for a persisted event, as their rules are now (pushers
        evaluate again to learn the tweaks); None if no rule matched or the user is not notified."""
        jobs = await self.prepare_push([event], only_user=user_id)
        return member_actions(jobs[0], 0) if jobs else None

    async def prepare_push(self, events: list[Event], only_user: str | None = None) -> list[PushJob]:
        """Everything evaluating these events reads (room facts, members' rules, threads), fetched:
        what is left, `evaluate_push`, is pure and may run in another thread."""
        jobs: list[PushJob] = []
        rules_service: PushRulesService = self.hs.push_rules
        # Users ignoring a sender are not notified of their non-state events (which their clients are
        # not shown), as Synapse does; one query for the batch's senders.
        ignorers = await self.ignore_index.ignorers_of(ev.sender for ev in events if not ev.is_state())
        for ev in events:
            position = ev.internal.stream_ordering
            if position is None:
                continue
            joined, names, auth = await self._room_facts(ev.internal.state_group_after)
            shunned = ignorers.get(ev.sender, ()) if not ev.is_state() else ()
            users = [u for u in joined if u != ev.sender and self.is_mine(u) and u not in shunned]
            if ev.membership == "invite" and ev.state_key and self.is_mine(ev.state_key) \
                    and ev.state_key != ev.sender:
                users.append(ev.state_key)
            if only_user is not None:
                users = [u for u in users if u == only_user]
            if not users:
                continue
            pl = auth.get(("m.room.power_levels", ""))
            levels = pl.content.get("notifications") if pl is not None else None
            members = []
            for user_id in users:
                compiled, template = await rules_service.evaluation_rules(user_id)
                members.append((user_id, names.get(user_id), compiled, template))
            jobs.append(PushJob(ev, int(position), members, len(joined),
                                get_user_power_level(ev.sender, auth, ev.room_version),
                                levels if isinstance(levels, dict) else {}, await self.thread_of(ev)))
        return jobs


