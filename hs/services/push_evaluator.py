"""Push rule evaluation (client-server spec, "Push Rules"): pure functions, no I/O.

`evaluate(rules, event, ctx)` walks a user's rules in priority order (each rule carrying its `kind`)
and returns the actions of the first enabled rule whose conditions all hold, or None when none does.

Conditions: `event_match` (glob, case-insensitive; `content.body` matches at word boundaries),
`event_property_is`, `event_property_contains`, `contains_display_name`, `room_member_count` and
`sender_notification_permission`. Keys are dot-separated paths where `\\.` is a literal dot and
`\\\\` a literal backslash. An unknown condition never matches, which disables its rule.

Like Synapse, the legacy body-based mention rules are skipped for events that carry `m.mentions`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from hs.db.stores.push import PushRow
from hs.events.event import Event

JsonDict = dict[str, Any]

# Rules skipped when the event has `m.mentions` (intentional mentions, MSC3952), as Synapse does.
LEGACY_MENTION_RULES = frozenset({".m.rule.contains_display_name", ".m.rule.contains_user_name",
                                  ".m.rule.roomnotif"})
_WORD = "A-Za-z0-9_"
_MEMBER_COUNT = re.compile(r"^(==|<=|>=|<|>)?([0-9]+)$")
MAX_SAFE_INT = 2 ** 53 - 1


@dataclass(slots=True)
class EvalContext:
    """What conditions need besides the event: facts about the user and the room at the event.
    (Not frozen: built once per member of every room an event is sent to, and a frozen dataclass
    takes several times longer to build.)"""

    user_id: str
    display_name: str | None = None
    member_count: int = 0
    sender_power_level: float = 0
    # The `notifications` object of the room's power levels (levels needed per notification kind).
    notification_levels: JsonDict = field(default_factory=dict)


@lru_cache(maxsize=4096)
def split_key(key: str) -> tuple[str, ...]:
    r"""A dot-separated property path as its parts: `content.m\.relates_to` -> (content, m.relates_to).

    Cached: every event is evaluated against the same few dozen rule keys for every room member."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(key):
        ch = key[i]
        if ch == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            current.append(key[i + 1])
            i += 2
            continue
        if ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return tuple(parts)


_MISSING = object()


def lookup(event: JsonDict, key: str) -> Any:
    """The value at the path, or `_MISSING` when any step is absent or not an object."""
    value: Any = event
    for part in split_key(key):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


@lru_cache(maxsize=4096)
def _glob_regex(pattern: str, word: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    if word:
        body = f"(?<![{_WORD}]){body}(?![{_WORD}])"
    return re.compile(body, re.IGNORECASE | re.DOTALL)


@lru_cache(maxsize=4096)
def _display_name_regex(name: str) -> re.Pattern[str]:
    return re.compile(f"(?<![{_WORD}]){re.escape(name)}(?![{_WORD}])", re.IGNORECASE)


def glob_matches(pattern: str, value: str, word_boundary: bool = False) -> bool:
    """`*` any run of characters, `?` exactly one; whole value, or any word-bounded substring."""
    regex = _glob_regex(pattern, word_boundary)
    if word_boundary:
        return regex.search(value) is not None
    return regex.fullmatch(value) is not None


def _is_scalar(v: Any) -> bool:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return True
    return isinstance(v, int) and -MAX_SAFE_INT <= v <= MAX_SAFE_INT


def scalar_equal(a: Any, b: Any) -> bool:
    """Exact equality of canonical-JSON scalars: no casts (true is not 1, "1" is not 1)."""
    if not (_is_scalar(a) and _is_scalar(b)):
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return type(a) is type(b) and a == b


def member_count_matches(spec: Any, count: int) -> bool:
    if not isinstance(spec, str):
        return False
    m = _MEMBER_COUNT.match(spec.strip())
    if m is None:
        return False
    op, n = m.group(1) or "==", int(m.group(2))
    return {"==": count == n, "<": count < n, ">": count > n, "<=": count <= n, ">=": count >= n}[op]


def condition_matches(cond: Any, event: JsonDict, ctx: EvalContext) -> bool:
    if not isinstance(cond, dict):
        return False
    kind = cond.get("kind")
    if kind == "event_match":
        key, pattern = cond.get("key"), cond.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return False
        value = lookup(event, key)
        if not isinstance(value, str):
            return False
        return glob_matches(pattern, value, word_boundary=(key == "content.body"))
    if kind == "event_property_is":
        key = cond.get("key")
        if not isinstance(key, str) or "value" not in cond:
            return False
        return scalar_equal(lookup(event, key), cond["value"])
    if kind == "event_property_contains":
        key = cond.get("key")
        if not isinstance(key, str) or "value" not in cond:
            return False
        value = lookup(event, key)
        return isinstance(value, list) and any(scalar_equal(v, cond["value"]) for v in value)
    if kind == "contains_display_name":
        body = lookup(event, "content.body")
        name = ctx.display_name
        if not isinstance(body, str) or not name:
            return False
        return _display_name_regex(name).search(body) is not None
    if kind == "room_member_count":
        return member_count_matches(cond.get("is"), ctx.member_count)
    if kind == "sender_notification_permission":
        key = cond.get("key")
        if not isinstance(key, str):
            return False
        level = ctx.notification_levels.get(key, 50)
        required: float
        if isinstance(level, bool) or not isinstance(level, int | float):
            try:
                required = int(level)
            except (TypeError, ValueError):
                required = 50
        else:
            required = level
        return ctx.sender_power_level >= required
    return False


def _memo_key(cond: JsonDict, ctx: EvalContext) -> tuple[Any, ...] | None:
    """What a condition's result depends on, for sharing results across the users of one event; None
    for conditions that are not plain scalars (never memoised)."""
    kind = cond.get("kind")
    value = cond.get("value")
    if not (value is None or isinstance(value, str | int | bool)):
        return None
    extra = ctx.display_name if kind == "contains_display_name" else None
    return (kind, cond.get("key"), cond.get("pattern"), type(value).__name__, value, cond.get("is"), extra)


def memo_condition_matches(cond: Any, event: JsonDict, ctx: EvalContext, memo: dict[Any, bool] | None) -> bool:
    if memo is None or not isinstance(cond, dict):
        return condition_matches(cond, event, ctx)
    key = _memo_key(cond, ctx)
    if key is None:
        return condition_matches(cond, event, ctx)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = condition_matches(cond, event, ctx)
    return hit


def rule_matches(kind: str, rule: JsonDict, event: JsonDict, ctx: EvalContext,
                 memo: dict[Any, bool] | None = None) -> bool:
    rule_id = rule.get("rule_id")
    if kind == "content":
        pattern = rule.get("pattern")
        body = lookup(event, "content.body")
        return isinstance(pattern, str) and isinstance(body, str) and glob_matches(pattern, body, True)
    if kind == "room":
        return event.get("room_id") == rule_id
    if kind == "sender":
        return event.get("sender") == rule_id
    conditions = rule.get("conditions") or []
    if not isinstance(conditions, list):
        return False
    return all(memo_condition_matches(c, event, ctx, memo) for c in conditions)


def evaluate(rules: list[tuple[str, JsonDict]], event: JsonDict, ctx: EvalContext,
             memo: dict[Any, bool] | None = None) -> list[Any] | None:
    """The actions of the first enabled matching rule (rules in priority order), or None.

    Pass one `memo` dict for all the users of one event (and one room member count and sender):
    conditions shared by their rule sets are then evaluated once."""
    content = event.get("content")
    has_mentions = isinstance(content, dict) and "m.mentions" in content
    for kind, rule in rules:
        if not rule.get("enabled", True):
            continue
        if has_mentions and rule.get("default") and rule.get("rule_id") in LEGACY_MENTION_RULES:
            continue
        if rule_matches(kind, rule, event, ctx, memo):
            actions = rule.get("actions")
            return list(actions) if isinstance(actions, list) else []
    return None


CompiledCondition = tuple[Any, tuple[Any, ...] | None, bool]  # condition, memo key, needs display name
# kind, rule, conditions, whole-rule memo key (None: evaluate per user), skipped when m.mentions is set
CompiledRule = tuple[str, JsonDict, list[CompiledCondition], tuple[Any, ...] | None, bool]


def compile_rules(rules: list[tuple[str, JsonDict]]) -> list[CompiledRule]:
    """Rules with their disabled ones dropped and their memo keys worked out once, for a user's cached
    rule set (see `evaluate_member`). A rule whose conditions are all user-independent gets a
    whole-rule key: in a room of many members it is evaluated once per event, not once per member."""
    out: list[CompiledRule] = []
    for kind, rule in rules:
        if not rule.get("enabled", True):
            continue
        conds: list[CompiledCondition] = []
        raw = rule.get("conditions") or [] if kind in ("override", "underride") else []
        if not isinstance(raw, list):
            continue  # malformed conditions never match
        for cond in raw:
            if isinstance(cond, dict):
                key = _memo_key(cond, EvalContext(user_id=""))
                conds.append((cond, key, cond.get("kind") == "contains_display_name"))
            else:
                conds.append((cond, None, False))
        rule_key: tuple[Any, ...] | None = None
        if kind in ("override", "underride") and all(k is not None and not n for _, k, n in conds):
            rule_key = ("rule", *(k for _, k, _ in conds))
        legacy = bool(rule.get("default")) and rule.get("rule_id") in LEGACY_MENTION_RULES
        out.append((kind, rule, conds, rule_key, legacy))
    return out


# Rule-set templates: members whose rule sets are alike share the work of evaluating an event.
_TEMPLATE_IDS: dict[tuple[Any, ...], int] = {}


class RuleTemplate:
    """What a user's compiled rules have in common with other users': `personal[i]` says rule i is
    evaluated per user (its values name this user, or it reads the display name); every other rule
    is part of the template, key and actions included, so users with the same template get the same
    result from it. Which rules are called personal only decides how much is shared, never a result."""

    __slots__ = ("template_id", "personal")

    def __init__(self, template_id: int, personal: tuple[bool, ...]) -> None:
        self.template_id = template_id
        self.personal = personal


def rule_template(rules: list[CompiledRule], user_id: str) -> RuleTemplate:
    localpart = user_id[1:].split(":", 1)[0] if user_id.startswith("@") else user_id
    own = {user_id, localpart}
    parts: list[tuple[Any, ...]] = []
    personal: list[bool] = []
    for kind, rule, conds, rule_key, legacy in rules:
        if kind in ("override", "underride"):
            mine = rule_key is None or any(
                isinstance(c, dict) and (c.get("value") in own or c.get("pattern") in own) for c, _, _ in conds)
            key: Any = rule_key
        elif kind == "content":
            mine = rule.get("pattern") in own
            key = rule.get("pattern")
        else:  # room, sender: the rule ID is what it matches
            mine = False
            key = rule.get("rule_id")
        personal.append(mine)
        parts.append((kind, legacy, "personal") if mine else (kind, legacy, key, _freeze(rule.get("actions"))))
    template_id = _TEMPLATE_IDS.setdefault(tuple(parts), len(_TEMPLATE_IDS))
    return RuleTemplate(template_id, tuple(personal))


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def evaluate_member(rules: list[CompiledRule], template: RuleTemplate, event: JsonDict, ctx: EvalContext,
                    memo: dict[Any, Any]) -> list[Any] | None:
    """`evaluate` over a member's compiled rules, sharing with the other members of the same
    template (same `memo`: one event, member count and sender) the walk over the template's rules:
    once per event it finds the first template rule that matches; each member then checks only their
    personal rules before it."""
    plan_key = ("template plan", template.template_id)
    plan = memo.get(plan_key)
    if plan is None:
        plan = memo[plan_key] = _plan(rules, template, event, ctx, memo)
    first_match, personal_before = plan
    for i in personal_before:
        kind, rule, conds, _, _ = rules[i]
        if (_conditions_match(conds, event, ctx, memo) if kind in ("override", "underride")
                else rule_matches(kind, rule, event, ctx, memo)):
            actions = rule.get("actions")
            return list(actions) if isinstance(actions, list) else []
    if first_match < 0:
        return None
    actions = rules[first_match][1].get("actions")
    return list(actions) if isinstance(actions, list) else []


def _plan(rules: list[CompiledRule], template: RuleTemplate, event: JsonDict, ctx: EvalContext,
          memo: dict[Any, Any]) -> tuple[int, tuple[int, ...]]:
    content = event.get("content")
    has_mentions = isinstance(content, dict) and "m.mentions" in content
    personal_before: list[int] = []
    for i, (kind, rule, conds, rule_key, legacy) in enumerate(rules):
        if has_mentions and legacy:
            continue
        if template.personal[i]:
            personal_before.append(i)
            continue
        if rule_key is not None:
            matched = memo.get(rule_key)
            if matched is None:
                matched = memo[rule_key] = _conditions_match(conds, event, ctx, memo)
        else:
            matched = rule_matches(kind, rule, event, ctx, memo)
        if matched:
            return i, tuple(personal_before)
    return -1, tuple(personal_before)


def _conditions_match(conds: list[CompiledCondition], event: JsonDict, ctx: EvalContext,
                      memo: dict[Any, bool]) -> bool:
    for cond, key, needs_name in conds:
        if key is None:
            hit = condition_matches(cond, event, ctx)
        else:
            full = (*key[:-1], ctx.display_name) if needs_name else key
            hit = memo.get(full)  # type: ignore[assignment]
            if hit is None:
                hit = memo[full] = condition_matches(cond, event, ctx)
        if not hit:
            return False
    return True


def notify_and_highlight(actions: list[Any] | None) -> tuple[bool, bool]:
    """(notify, highlight) of an actions list; `dont_notify`/`coalesce` are ignored, as the spec says.

    Highlighting only counts for a notification (Synapse stores push actions only for `notify`).
    """
    if not actions:
        return False, False
    notify = "notify" in actions
    highlight = False
    for a in actions:
        if isinstance(a, dict) and a.get("set_tweak") == "highlight":
            value = a.get("value", True)
            highlight = value is True
    return notify, notify and highlight


@dataclass(slots=True)
class PushJob:
    """One event to evaluate for its room's members, with what the evaluation reads."""

    event: Event
    position: int
    members: list[tuple[str, str | None, list[CompiledRule], RuleTemplate]]  # user, display name, rules
    member_count: int
    sender_level: float
    notification_levels: JsonDict
    thread: str


def member_actions(job: PushJob, member: int) -> list[Any] | None:
    """The push rule actions of one member of a prepared job (None: no rule matched)."""
    user_id, display_name, compiled, template = job.members[member]
    ctx = EvalContext(user_id=user_id, display_name=display_name, member_count=job.member_count,
                      sender_power_level=job.sender_level, notification_levels=job.notification_levels)
    return evaluate_member(compiled, template, job.event.pdu, ctx, {})


def evaluate_push(jobs: list[PushJob]) -> list[PushRow]:
    """The push rows of prepared events: pure (no I/O, no shared state but thread-safe caches)."""
    rows: list[PushRow] = []
    for job in jobs:
        ev = job.event
        memo: dict[Any, Any] = {}  # same event, member count and sender for every user
        for user_id, display_name, compiled, template in job.members:
            ctx = EvalContext(user_id=user_id, display_name=display_name, member_count=job.member_count,
                              sender_power_level=job.sender_level, notification_levels=job.notification_levels)
            notify, highlight = notify_and_highlight(evaluate_member(compiled, template, ev.pdu, ctx, memo))
            if notify:
                rows.append((user_id, ev.room_id, job.position, job.thread, ev.event_id, highlight))
    return rows
