"""A Synapse admin's config (issue 17 part 2): Synapse's top-level keys classified, notices for those
hs ignores, refusal where ignoring would change security or data, typos answered with the closest key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hs.config import ConfigError, HomeserverConfig, parse_config
from hs.config_synapse import SYNAPSE_KEYS, classify

BASE = {"server_name": "example.org"}


def problems(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, **data})
    return e.value.problems


def test_every_synapse_key_is_classified_once() -> None:
    fields = set(HomeserverConfig.model_fields)
    # A key hs has is read from the model, never listed as ignored.
    assert not fields & set(SYNAPSE_KEYS)
    kinds = {key: classify(key, fields) for key in SYNAPSE_KEYS}
    assert set(kinds.values()) == {"no_effect", "unsupported", "refused"}
    for key in ("report_stats", "suppress_key_server_warning", "caches"):
        assert classify(key, fields) == "no_effect"
    for key in ("server_name", "listeners", "database", "log_config", "macaroon_secret_key", "form_secret",
                "media_store_path", "trusted_key_servers"):
        assert classify(key, fields) == "hs"
    for key in ("oidc_providers", "saml2_config", "cas_config", "jwt_config", "password_config", "retention"):
        assert classify(key, fields) == "refused"
    assert classify("enable_registraton", fields) == "unknown"


def test_table_covers_the_keys_synapse_reads() -> None:
    """Every `config.get("x")` / `config["x"]` of Synapse's config classes (the pinned Synapse the
    federation tests install, read from its virtualenv) is hs's or in the table."""
    from tests.federation.synapse import ensure_synapse

    python = ensure_synapse()
    found = sorted(python.parent.parent.glob("lib/python3*/site-packages/synapse/config"))
    assert found, "the Synapse virtualenv has no synapse/config package"
    known = set(HomeserverConfig.model_fields) | set(SYNAPSE_KEYS)
    read: set[str] = set()
    for path in found[0].glob("*.py"):
        read |= set(re.findall(r'\bconfig(?:\.get\(|\[)\s*"([a-z0-9_]+)"', path.read_text()))
    read -= {"args", "name"}  # `database`'s own keys, read through the same variable name
    assert sorted(read - known) == []


def test_no_effect_and_unsupported_keys_are_accepted_with_a_notice() -> None:
    cfg = parse_config({**BASE, "report_stats": False, "suppress_key_server_warning": True,
                        "email": {"smtp_host": "localhost"}, "oidc_providers": [],
                        "password_config": {"enabled": True}, "retention": {"enabled": False}})
    assert len(cfg.notices) == 6
    assert "Synapse option `report_stats` has no effect on hs (hs sends no usage statistics); ignored" \
        in cfg.notices
    assert any(n.startswith("Synapse option `email` is not supported by hs") for n in cfg.notices)
    # A refusable option in its off state is only a notice.
    assert any(n.startswith("Synapse option `retention` is not supported by hs") for n in cfg.notices)
    assert parse_config(BASE).notices == []


@pytest.mark.parametrize("key,value", [
    ("oidc_providers", [{"idp_id": "google", "issuer": "https://accounts.google.com/"}]),
    ("saml2_config", {"sp_config": {}}),
    ("password_config", {"policy": {"minimum_length": 12}}),
    ("password_config", {"enabled": False}),
    ("retention", {"enabled": True, "default_policy": {"max_lifetime": "1y"}}),
    ("encryption_enabled_by_default_for_room_type", "all"),
    ("enable_registration_captcha", True),
    ("modules", [{"module": "my_module.Checker"}]),
    ("experimental_features", {"msc3861": {"enabled": True}}),
])
def test_security_relevant_options_in_effect_are_refused(key: str, value: object) -> None:
    out = problems({key: value})
    assert len(out) == 1
    assert out[0].startswith(f"{key}: Synapse option `{key}` is not supported by hs, and ignoring it would "
                             "change security or data (")


def test_typo_is_refused_with_the_closest_key() -> None:
    assert problems({"enable_registraton": True}) == [
        "enable_registraton: unknown key", "enable_registraton: did you mean `enable_registration`?"]
    # Synapse keys are known too.
    assert problems({"suppress_key_server_warnings": True})[1] == \
        "suppress_key_server_warnings: did you mean `suppress_key_server_warning`?"
    # Nested sections suggest from their own keys.
    out = problems({"listeners": [{"port": 8008, "bind_adresses": ["::1"]}], "rc_login": {"adress": {}}})
    assert "listeners.0.bind_adresses: did you mean `bind_addresses`?" in out
    assert "rc_login.adress: did you mean `address`?" in out
    # Nothing close: no suggestion.
    assert problems({"zzzz_qqqq": 1}) == ["zzzz_qqqq: unknown key"]


def test_synapse_database_shape_is_accepted() -> None:
    cfg = parse_config({**BASE, "database": {"name": "sqlite3", "args": {"database": "/data/homeserver.db"}}})
    assert (cfg.database.engine, cfg.database.sqlite_path) == ("sqlite", "/data/homeserver.db")
    cfg = parse_config({**BASE, "database": {"name": "psycopg2", "args": {
        "user": "synapse", "password": "pw", "database": "synapse", "host": "db", "cp_min": 5, "cp_max": 10}}})
    assert cfg.database.engine == "postgres"
    assert cfg.database.postgres_dsn == "postgresql://synapse:pw@db:5432/synapse"


def test_json_formatter_writes_one_object_per_record() -> None:
    import json
    import logging

    from hs.logging_setup import JsonFormatter

    record = logging.LogRecord("hs.sync", logging.WARNING, __file__, 1, "slow sync for %s", ("@a:x",), None)
    record.instance = "sync1"
    record.room_id = "!r:x"  # an `extra` field
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    out = json.loads(JsonFormatter().format(record))
    assert out["log"] == "slow sync for @a:x" and out["namespace"] == "hs.sync" and out["level"] == "WARNING"
    assert out["instance"] == "sync1" and out["room_id"] == "!r:x"
    assert "ValueError: boom" in out["exc_info"] and isinstance(out["time"], float)


def test_synapse_log_config_classes_map_to_hs(tmp_path: Path) -> None:
    from hs.logging_setup import LogConfigError, read_log_config

    path = tmp_path / "log.config"
    path.write_text("""\
version: 1
formatters:
  structured: {class: synapse.logging.TerseJsonFormatter}
filters:
  context: {(): synapse.logging.context.LoggingContextFilter, request: ""}
handlers:
  buffer: {class: synapse.logging.handlers.PeriodicallyFlushingMemoryHandler, capacity: 10, target: console}
  console: {class: logging.StreamHandler, formatter: structured}
""")
    config = read_log_config(path)
    assert config["formatters"]["structured"]["class"] == "hs.logging_setup.JsonFormatter"
    assert config["filters"]["context"]["()"] == "hs.logging_setup.RequestFilter"
    assert config["handlers"]["buffer"]["class"] == "hs.logging_setup.PeriodicallyFlushingMemoryHandler"
    path.write_text("handlers: {}\n")
    with pytest.raises(LogConfigError, match="not a logging dictConfig"):
        read_log_config(path)


def test_synapse_section_keys_are_screened_by_path() -> None:
    cfg = parse_config({**BASE, "listeners": [
        {"port": 8008, "bind_address": "0.0.0.0", "tag": "main", "x_forwarded": True,
         "resources": [{"names": ["client", "federation"], "compress": False}]}],
        "database": {"name": "sqlite3", "allow_unsafe_locale": True, "txn_limit": 10000,
                     "args": {"database": "/data/homeserver.db"}},
        "redis": {"enabled": False, "use_tls": False}})
    # Synapse's singular bind_address joins bind_addresses.
    assert cfg.listeners[0].bind_addresses == ["0.0.0.0"]
    assert cfg.listeners[0].resources == ["client", "federation"]
    assert [n.split(" ")[2] for n in cfg.notices] == [
        "`listeners.0.tag`", "`database.allow_unsafe_locale`", "`database.txn_limit`", "`redis.use_tls`"]
    out = problems({"redis": {"enabled": True, "use_tls": True},
                    "workers": {"w1": {"listeners": [{"port": 1, "path": "/run/w1.sock"}]}}})
    assert any(p.startswith("redis.use_tls: Synapse option `redis.use_tls` is not supported by hs") for p in out)
    assert any(p.startswith("workers.w1.listeners.0.path: Synapse option") for p in out)


def test_redis_acl_username() -> None:
    cfg = parse_config({**BASE, "redis": {"enabled": True, "username": "hs", "password": "p@ss"}})
    assert cfg.redis.connection_url == "redis://hs:p%40ss@127.0.0.1:6379/0"


def test_doc_lists_every_refused_option() -> None:
    from hs.config_synapse import SECTION_KEYS

    doc = (Path(__file__).parents[2] / "docs" / "synapse-config.md").read_text()
    refused = [k for k, e in SYNAPSE_KEYS.items() if e.kind == "refused"]
    refused += [f"{s}.{k}" for s, t in SECTION_KEYS.items() for k, e in t.items() if e.kind == "refused"]
    assert [k for k in refused if f"| `{k}` |" not in doc] == []
    kinds = [e.kind for e in SYNAPSE_KEYS.values()]
    for label, kind in (("no effect", "no_effect"), ("unsupported", "unsupported"),
                        ("refused when in effect", "refused")):
        assert f"| {label} | {kinds.count(kind)} |" in doc


def test_presence_section_is_read_as_use_presence() -> None:
    cfg = parse_config({**BASE, "use_presence": True, "presence": {"enabled": False, "idle_timeout": "5m"}})
    assert cfg.use_presence is False
    assert cfg.notices == ["Synapse option `presence.idle_timeout` is not supported by hs (hs's presence timers "
                           "are fixed); ignored"]
    assert parse_config({**BASE, "presence": {"enabled": "untracked"}}).use_presence is True


def test_experimental_features_is_a_notice_unless_it_delegates_authentication() -> None:
    cfg = parse_config({**BASE, "experimental_features": {"msc3266_enabled": True}})
    assert cfg.notices == ["Synapse option `experimental_features` is not supported by hs; ignored (as given, "
                           "it would not change security or data)"]
