"""Config validation: Synapse key names, strictness, and one clear line per problem naming the key."""

from __future__ import annotations

import pytest

from hs.config import ConfigError, parse_config


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    return e.value.problems


def test_minimal_config_defaults_are_safe() -> None:
    cfg = parse_config({"server_name": "example.org"})
    assert cfg.enable_registration is False
    assert cfg.database.engine == "sqlite"
    assert cfg.default_room_version == "12"
    assert cfg.stream_writers.events == ["main"]


def test_synapse_style_database_and_listeners_are_accepted() -> None:
    cfg = parse_config({
        "server_name": "example.org",
        "database": {"name": "psycopg2", "args": {"user": "hs", "database": "hsdb", "host": "db", "port": 5433}},
        "listeners": [{"port": 8008, "type": "http", "resources": [{"names": ["client", "federation"]}]}],
    })
    assert cfg.database.engine == "postgres"
    assert cfg.database.postgres_dsn == "postgresql://hs@db:5433/hsdb"
    assert cfg.listeners[0].resources == ["client", "federation"]


def test_a_unix_socket_directory_as_host_connects_through_the_socket() -> None:
    """Synapse admins write `host: /var/run/postgresql` for a local PostgreSQL."""
    cfg = parse_config({"server_name": "example.org", "database": {
        "name": "psycopg2", "args": {"user": "hs", "database": "hsdb", "host": "/var/run/postgresql"}}})
    assert cfg.database.postgres_dsn == "postgresql://hs@/hsdb?host=/var/run/postgresql&port=5432"


def test_unknown_key_and_bad_type_are_named() -> None:
    out = problems({"server_name": "x.org", "enable_registraton": True, "listeners": [{"port": "eighty"}]})
    assert "enable_registraton: unknown key" in out
    assert any(p.startswith("listeners.0.port:") for p in out)


def test_missing_server_name() -> None:
    assert problems({}) == ["server_name: required key is missing"]


def test_unknown_room_version_and_resource() -> None:
    out = problems({"server_name": "x.org", "default_room_version": "99",
                    "listeners": [{"port": 1, "resources": ["clinet"]}]})
    assert any(p.startswith("default_room_version: unknown room version '99'") for p in out)
    assert any(p.startswith("listeners.0.resources:") and "clinet" in p for p in out)


def test_cluster_rules_name_the_key() -> None:
    out = problems({
        "server_name": "x.org",
        "database": {"engine": "sqlite", "path": "x.db"},
        "workers": {"w1": {"app": "generic_worker"}},
        "stream_writers": {"typing": ["w1", "w2"], "events": ["ghost"]},
        "listeners": [{"port": 9093, "bind_addresses": ["0.0.0.0"], "resources": ["replication"]}],
    })
    text = "\n".join(out)
    assert "database: workers need PostgreSQL" in text
    assert "redis.enabled:" in text
    assert "stream_writers.typing: only one writer is supported" in text
    assert "stream_writers.events: 'ghost' is not a configured worker" in text
    assert "stream_writers.typing: 'w1' is missing from instance_map" in text
    assert "worker_replication_secret:" in text


def test_yaml_errors_are_reported(tmp_path) -> None:
    from hs.config import load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("server_name: [unclosed")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "not valid YAML" in e.value.problems[0]
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read config file" in e.value.problems[0]
