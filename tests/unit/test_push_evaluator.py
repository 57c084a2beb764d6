"""Push rule evaluation: each condition kind, key paths with escapes, and the default rule set."""

from __future__ import annotations

from typing import Any

import pytest

from hs.services.push_evaluator import (
    EvalContext,
    condition_matches,
    evaluate,
    glob_matches,
    notify_and_highlight,
    split_key,
)
from hs.services.push_rules import KINDS, default_rules

ME = "@bob:example.org"
CTX = EvalContext(user_id=ME, display_name="Bobby Tables", member_count=3, sender_power_level=0)


def ev(etype: str = "m.room.message", content: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": etype, "content": content if content is not None else {}, "sender": "@alice:example.org",
            "room_id": "!room:example.org", "event_id": "$ev", **extra}


def text(body: str, **content: Any) -> dict[str, Any]:
    return ev(content={"msgtype": "m.text", "body": body, **content})


def match(cond: dict[str, Any], event: dict[str, Any], ctx: EvalContext = CTX) -> bool:
    return condition_matches(cond, event, ctx)


# -- key paths ---------------------------------------------------------------------------------------------------
def test_split_key_handles_escaped_dots_and_backslashes() -> None:
    assert split_key("content.body") == ("content", "body",)
    assert split_key("content.m\\.relates_to.rel_type") == ("content", "m.relates_to", "rel_type",)
    assert split_key("content.m\\\\foo") == ("content", "m\\foo",)
    # Other escapes are left as they are: a literal backslash followed by the character.
    assert split_key("content.a\\xb") == ("content", "a\\xb",)
    assert split_key("type") == ("type",)


# -- event_match -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("topic,expected", [
    ("Lunch plans", True), ("LUNCH", True), (" lunch", False), ("lunc", False), (None, False), (7, False),
])
def test_event_match_globs_the_whole_value_case_insensitively(topic: Any, expected: bool) -> None:
    cond = {"kind": "event_match", "key": "content.topic", "pattern": "lunc?*"}
    assert match(cond, ev("m.room.topic", {"topic": topic}, state_key="")) is expected


def test_event_match_absent_or_non_string_never_matches_even_star() -> None:
    cond = {"kind": "event_match", "key": "content.topic", "pattern": "*"}
    assert not match(cond, ev("m.room.topic", {}))
    assert not match(cond, ev("m.room.topic", {"topic": {"a": 1}}))
    assert match(cond, ev("m.room.topic", {"topic": ""}))


@pytest.mark.parametrize("body,expected", [
    ("An example event.", True), ("exple", True), ("An exciting triple-whammy", True),
    ("Anexample", False), ("examples", False), ("exampled", False), ("texample", False),
])
def test_event_match_on_body_matches_at_word_boundaries(body: str, expected: bool) -> None:
    cond = {"kind": "event_match", "key": "content.body", "pattern": "ex*ple"}
    assert match(cond, text(body)) is expected


def test_event_match_with_escaped_key() -> None:
    cond = {"kind": "event_match", "key": "content.m\\.relates_to.rel_type", "pattern": "m.thread"}
    assert match(cond, text("x", **{"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}))
    assert not match(cond, text("x", m={"relates_to": {"rel_type": "m.thread"}}))


def test_glob_question_mark_is_exactly_one_character() -> None:
    assert glob_matches("a?c", "abc")
    assert not glob_matches("a?c", "ac")
    assert not glob_matches("a?c", "abbc")
    assert glob_matches("a.c", "a.c") and not glob_matches("a.c", "abc")  # regex characters are literal


# -- event_property_is / event_property_contains ---------------------------------------------------------------
def test_event_property_is_exact_without_casts() -> None:
    cond = {"kind": "event_property_is", "key": "content.m\\.federate", "value": True}
    assert match(cond, ev("m.room.create", {"m.federate": True}))
    assert not match(cond, ev("m.room.create", {"m.federate": "true"}))
    assert not match(cond, ev("m.room.create", {"m.federate": 1}))
    assert not match(cond, ev("m.room.create", {}))
    one = {"kind": "event_property_is", "key": "content.n", "value": 1}
    assert match(one, ev(content={"n": 1}))
    assert not match(one, ev(content={"n": True}))
    assert not match(one, ev(content={"n": "1"}))
    null = {"kind": "event_property_is", "key": "content.n", "value": None}
    assert match(null, ev(content={"n": None}))
    assert not match(null, ev(content={}))
    assert not match({"kind": "event_property_is", "key": "content.n", "value": [1]}, ev(content={"n": [1]}))


def test_event_property_contains() -> None:
    cond = {"kind": "event_property_contains", "key": "content.alt_aliases", "value": "#myroom:example.com"}
    good = ev("m.room.canonical_alias", {"alt_aliases": ["#somewhere:example.org", "#myroom:example.com"]})
    assert match(cond, good)
    assert not match(cond, ev("m.room.canonical_alias", {"alt_aliases": [":example.com"]}))
    assert not match(cond, ev("m.room.canonical_alias", {"alt_aliases": "#myroom:example.com"}))
    assert not match(cond, ev("m.room.canonical_alias", {}))
    assert not match({"kind": "event_property_contains", "key": "content.xs", "value": 1},
                     ev(content={"xs": [True, "1", [1]]}))


# -- contains_display_name, room_member_count, sender_notification_permission ----------------------------------
@pytest.mark.parametrize("body,expected", [
    ("hello Bobby Tables!", True), ("BOBBY TABLES", True), ("Bobby Tablesx", False), ("Bobby", False),
])
def test_contains_display_name(body: str, expected: bool) -> None:
    assert match({"kind": "contains_display_name"}, text(body)) is expected


def test_contains_display_name_needs_a_name_and_a_body() -> None:
    cond = {"kind": "contains_display_name"}
    assert not match(cond, text("hello"), EvalContext(user_id=ME, display_name=None))
    assert not match(cond, text("hello"), EvalContext(user_id=ME, display_name=""))
    assert not match(cond, ev(content={"msgtype": "m.text"}))


@pytest.mark.parametrize("spec,expected", [
    ("3", True), ("==3", True), ("2", False), ("<4", True), ("<3", False), (">2", True), (">3", False),
    (">=3", True), (">=4", False), ("<=3", True), ("<=2", False), ("=3", False), ("three", False), (3, False),
])
def test_room_member_count(spec: Any, expected: bool) -> None:
    assert match({"kind": "room_member_count", "is": spec}, text("x")) is expected


def test_sender_notification_permission() -> None:
    cond = {"kind": "sender_notification_permission", "key": "room"}
    assert match(cond, text("x"), EvalContext(user_id=ME, sender_power_level=50))
    assert not match(cond, text("x"), EvalContext(user_id=ME, sender_power_level=49))
    custom = EvalContext(user_id=ME, sender_power_level=50, notification_levels={"room": 100})
    assert not match(cond, text("x"), custom)
    assert match(cond, text("x"), EvalContext(user_id=ME, sender_power_level=0, notification_levels={"room": 0}))


def test_unknown_condition_disables_the_rule() -> None:
    assert not match({"kind": "org.example.unknown"}, text("x"))
    rules = [("override", {"rule_id": "r", "enabled": True, "conditions": [{"kind": "nope"}], "actions": ["notify"]})]
    assert evaluate(rules, text("x"), CTX) is None


# -- rule order and the default rule set ---------------------------------------------------------------------
def defaults(user_id: str = ME) -> list[tuple[str, dict[str, Any]]]:
    d = default_rules(user_id)
    return [(k, r) for k in KINDS for r in d[k]]


def result(event: dict[str, Any], ctx: EvalContext = CTX,
           rules: list[tuple[str, dict[str, Any]]] | None = None) -> tuple[bool, bool]:
    return notify_and_highlight(evaluate(defaults() if rules is None else rules, event, ctx))


def rule_ids(kind: str) -> list[str]:
    return [r["rule_id"] for r in default_rules(ME)[kind]]


def test_default_rule_ids_and_order() -> None:
    assert rule_ids("override") == [
        ".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
        ".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.is_room_mention",
        ".m.rule.roomnotif", ".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl",
        ".m.rule.suppress_edits"]
    assert rule_ids("content") == [".m.rule.contains_user_name"]
    assert rule_ids("underride") == [".m.rule.call", ".m.rule.encrypted_room_one_to_one",
                                     ".m.rule.room_one_to_one", ".m.rule.message", ".m.rule.encrypted"]
    master = default_rules(ME)["override"][0]
    assert master["enabled"] is False and master["actions"] == [] and master["default"] is True
    assert default_rules(ME)["content"][0]["pattern"] == "bob"


def test_plain_message_notifies_without_highlight() -> None:
    assert result(text("hello everyone")) == (True, False)


def test_one_to_one_message_notifies_with_sound() -> None:
    actions = evaluate(defaults(), text("hi"), EvalContext(user_id=ME, member_count=2))
    assert actions == ["notify", {"set_tweak": "sound", "value": "default"}]


def test_encrypted_events_notify() -> None:
    assert result(ev("m.room.encrypted", {"algorithm": "x"})) == (True, False)
    one_to_one = evaluate(defaults(), ev("m.room.encrypted", {}), EvalContext(user_id=ME, member_count=2))
    assert one_to_one is not None and "notify" in one_to_one and {"set_tweak": "sound", "value": "default"} in one_to_one


def test_notices_reactions_edits_members_and_acls_do_not_notify() -> None:
    assert result(text("beep", msgtype="m.notice")) == (False, False)
    assert result(ev("m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "+"}})) \
        == (False, False)
    edit = text("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}})
    assert result(edit) == (False, False)
    assert result(ev("m.room.member", {"membership": "join"}, state_key="@carol:example.org")) == (False, False)
    assert result(ev("m.room.server_acl", {"allow": ["*"]}, state_key="")) == (False, False)


def test_display_name_mention_highlights() -> None:
    assert result(text("ping Bobby Tables, lunch?")) == (True, True)


def test_user_name_mention_highlights() -> None:
    assert result(text("hey bob: look")) == (True, True)
    assert result(text("bobcat")) == (True, False)


def test_intentional_mentions() -> None:
    mention = text("hi", **{"m.mentions": {"user_ids": [ME]}})
    assert result(mention) == (True, True)
    # With m.mentions present the legacy body rules no longer apply.
    legacy = text("Bobby Tables bob", **{"m.mentions": {}})
    assert result(legacy) == (True, False)


def test_room_mentions_need_permission() -> None:
    allowed = EvalContext(user_id=ME, member_count=3, sender_power_level=50)
    assert result(text("@room hi", **{"m.mentions": {"room": True}}), allowed) == (True, True)
    assert result(text("@room hi", **{"m.mentions": {"room": True}}), CTX) == (True, False)
    assert result(text("@room lunch"), allowed) == (True, True)
    assert result(text("@room lunch"), CTX) == (True, False)


def test_invite_for_me_and_not_for_others() -> None:
    invite_me = ev("m.room.member", {"membership": "invite"}, state_key=ME)
    actions = evaluate(defaults(), invite_me, CTX)
    assert actions == ["notify", {"set_tweak": "sound", "value": "default"}]
    invite_other = ev("m.room.member", {"membership": "invite"}, state_key="@carol:example.org")
    assert result(invite_other) == (False, False)


def test_tombstone_and_call() -> None:
    assert result(ev("m.room.tombstone", {"body": "moved"}, state_key="")) == (True, True)
    assert result(ev("m.room.tombstone", {"body": "moved"})) == (False, False)  # not a state event
    assert evaluate(defaults(), ev("m.call.invite", {}), CTX) == ["notify", {"set_tweak": "sound", "value": "ring"}]


def test_enabled_master_rule_silences_everything() -> None:
    rules = defaults()
    rules[0] = (rules[0][0], {**rules[0][1], "enabled": True})
    assert result(text("Bobby Tables"), rules=rules) == (False, False)


def test_user_rules_take_priority_and_disabled_rules_are_skipped() -> None:
    room_rule = ("room", {"rule_id": "!room:example.org", "enabled": True, "actions": []})
    base = defaults()
    with_room = base[:13] + [room_rule] + base[13:]
    # A room rule outranks underride rules (plain messages) but not override rules (mentions).
    assert result(text("hello"), rules=with_room) == (False, False)
    assert result(text("Bobby Tables"), rules=with_room) == (True, True)
    disabled = base[:13] + [("room", {**room_rule[1], "enabled": False})] + base[13:]
    assert result(text("hello"), rules=disabled) == (True, False)
    sender_rule = ("sender", {"rule_id": "@alice:example.org", "enabled": True,
                              "actions": ["notify", {"set_tweak": "highlight", "value": True}]})
    assert result(text("hello"), rules=base[:13] + [sender_rule] + base[13:]) == (True, True)
    content_rule = ("content", {"rule_id": "cake", "enabled": True, "pattern": "cake*lie",
                                "actions": ["notify", {"set_tweak": "highlight"}]})
    assert result(text("the CAKE is a lie"), rules=[content_rule] + base) == (True, True)
    assert result(text("cakes are a lie"), rules=[content_rule] + base) == (True, True)
    assert result(text("pancake is a lie"), rules=[content_rule] + base) == (True, False)


def test_actions_helpers() -> None:
    assert notify_and_highlight(None) == (False, False)
    assert notify_and_highlight(["dont_notify"]) == (False, False)
    assert notify_and_highlight(["notify", {"set_tweak": "highlight", "value": False}]) == (True, False)
    # A highlight without notify is not counted.
    assert notify_and_highlight([{"set_tweak": "highlight"}]) == (False, False)


# -- the compiled form used on the send path gives the same answers -----------------------------------------
def test_compiled_rules_match_plain_evaluation_for_many_users_sharing_a_memo() -> None:
    from hs.services.push_evaluator import compile_rules, evaluate_member, rule_template

    events = [
        ev(content={"msgtype": "m.text", "body": "hello"}),
        ev(content={"msgtype": "m.notice", "body": "bot says hi"}),
        ev(content={"msgtype": "m.text", "body": "hey Bobby Tables, look"}),
        ev(content={"msgtype": "m.text", "body": "@room wake up"}),
        ev(content={"msgtype": "m.text", "body": "x", "m.mentions": {"user_ids": [ME]}}),
        ev(content={"msgtype": "m.text", "body": "x", "m.mentions": {"room": True}}),
        ev("m.room.member", {"membership": "invite"}, state_key=ME),
        ev("m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2"}),
        ev("m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "+1"}}),
        ev("m.room.tombstone", {"body": "gone"}, state_key=""),
    ]
    users = [(ME, "Bobby Tables"), ("@alice:example.org", "Alice"), ("@carol:example.org", None)]
    for event in events:
        for member_count in (2, 3):
            memo: dict[Any, bool] = {}
            for user_id, name in users:
                ctx = EvalContext(user_id=user_id, display_name=name, member_count=member_count,
                                  sender_power_level=50)
                plain = evaluate(defaults(user_id), event, ctx)
                rules = compile_rules(defaults(user_id))
                compiled = evaluate_member(rules, rule_template(rules, user_id), event, ctx, memo)
                assert compiled == plain, (event, user_id)


def test_members_sharing_a_rule_template_get_the_same_answers_as_plain_evaluation() -> None:
    """`evaluate_member` walks a template's shared rules once per event; each member's answer must
    still be exactly what plain evaluation of their own rules gives, whatever they customised."""
    import copy

    from hs.services.push_evaluator import compile_rules, evaluate_member, rule_template

    def customised(user_id: str, change: str) -> list[tuple[str, dict[str, Any]]]:
        rules = copy.deepcopy(defaults(user_id))
        for _, rule in rules:
            if change == "mute_messages" and rule["rule_id"] == ".m.rule.message":
                rule["actions"] = []
            if change == "no_mentions" and rule["rule_id"] == ".m.rule.is_user_mention":
                rule["enabled"] = False
        if change == "keyword":
            rules.insert(0, ("content", {"rule_id": "kw", "pattern": "lunch", "default": False, "enabled": True,
                                         "actions": ["notify", {"set_tweak": "highlight"}]}))
        if change == "mute_room":
            rules.insert(0, ("override", {"rule_id": "!room:example.org", "default": False, "enabled": True,
                                          "conditions": [{"kind": "event_match", "key": "room_id",
                                                          "pattern": "!room:example.org"}], "actions": []}))
        return rules

    events = [
        text("hello"), text("lunch time, Bobby Tables?"), text("hey alice"), text("@room up"),
        ev(content={"msgtype": "m.notice", "body": "bot says hi"}),
        text("x", **{"m.mentions": {"user_ids": ["@alice:example.org"]}}),
        text("x", **{"m.mentions": {"user_ids": [ME], "room": True}}),
        ev("m.room.member", {"membership": "invite"}, state_key="@carol:example.org"),
        ev("m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2"}),
    ]
    members = [(ME, "Bobby Tables", ""), ("@alice:example.org", "Alice", ""), ("@carol:example.org", None, ""),
               ("@dave:example.org", "Dave", "mute_messages"), ("@erin:example.org", "erin", "no_mentions"),
               ("@frank:example.org", "Frank", "keyword"), ("@gina:example.org", "Gina", "mute_room"),
               ("@hal:example.org", "hey", "")]
    for event in events:
        for member_count in (2, 5):
            memo: dict[Any, Any] = {}
            for user_id, name, change in members:
                rules = customised(user_id, change)
                ctx = EvalContext(user_id=user_id, display_name=name, member_count=member_count,
                                  sender_power_level=50)
                compiled = compile_rules(rules)
                shared = evaluate_member(compiled, rule_template(compiled, user_id), event, ctx, memo)
                assert shared == evaluate(rules, event, ctx), (event, user_id, change)
    a, b = (compile_rules(defaults(u)) for u in (ME, "@alice:example.org"))
    assert rule_template(a, ME).template_id == rule_template(b, "@alice:example.org").template_id
