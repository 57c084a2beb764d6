"""Config validation: Synapse key names, strictness, and one clear line per problem naming the key."""

from __future__ import annotations

from pathlib import Path

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


def test_duty_instances_must_be_configured_workers() -> None:
    """A typo in a duty's instance would leave the duty run by nobody, silently."""
    cluster = {
        "server_name": "x.org",
        "database": {"engine": "postgres", "dsn": "postgresql://x@127.0.0.1/hs"},
        "redis": {"enabled": True},
        "workers": {"bg": {"app": "generic_worker"}, "media1": {"app": "media_repository"}},
    }
    out = problems({**cluster, "update_user_directory_from_worker": "bgg",
                    "notify_appservices_from_worker": "ghost", "media_instance_running_background_jobs": "media2"})
    assert "update_user_directory_from_worker: 'bgg' is not a configured worker (known: ['bg', 'main', 'media1'])" \
        in out
    assert any(p.startswith("notify_appservices_from_worker: 'ghost' is not a configured worker") for p in out)
    assert any(p.startswith("media_instance_running_background_jobs: 'media2' is not a configured worker")
               for p in out)
    cfg = parse_config({**cluster, "update_user_directory_from_worker": "bg", "notify_appservices_from_worker": "main",
                        "media_instance_running_background_jobs": "media1"})
    assert cfg.media_instance_running_background_jobs == "media1"


def test_pool_bounds_are_read_where_synapse_puts_them() -> None:
    from hs.db.pool import PostgresDatabase, make_database

    def pg(args: dict, **extra: object) -> dict:
        return {"server_name": "x.org", "database": {"name": "psycopg2", "args": args, **extra}}

    cfg = parse_config(pg({"user": "hs", "cp_min": 5, "cp_max": 7}))
    db = make_database(cfg.database)
    assert isinstance(db, PostgresDatabase) and (db.min_size, db.max_size) == (5, 7)
    assert (parse_config(pg({})).database.pool_min, parse_config(pg({})).database.pool_max) == (2, 10)
    assert parse_config(pg({}, cp_max=4)).database.pool_max == 4  # hs's shorter form still works
    assert problems(pg({"cp_min": 5}, cp_min=3)) == [
        "database.cp_min: given again as database.args.cp_min (give it once)"]
    assert problems(pg({"cp_min": 12, "cp_max": 10})) == ["database.args.cp_min: 12 is more than cp_max (10)"]
    assert problems(pg({"cp_max": 0})) == ["database.args.cp_max: Input should be greater than or equal to 1"]


def test_database_args_hs_cannot_honour_are_refused_by_name() -> None:
    out = problems({"server_name": "x.org", "database": {"name": "psycopg2", "args": {
        "user": "hs", "keepalive": 1, "sslmode": "sometimes"}}})
    assert "database.args.keepalive: unknown key" in out
    assert any(p.startswith("database.args.sslmode: Input should be 'disable'") for p in out)
    assert problems({"server_name": "x.org", "database": {"name": "psycopg2", "args": {
        "database": "hs", "dbname": "synapse"}}}) == [
        "database.args.dbname: given again as database.args.database (give it once)"]
    out = problems({"server_name": "x.org", "database": {"name": "sqlite3", "args": {
        "database": "hs.db", "host": "db", "cp_min": 1}}})
    assert out == ["database.args.host: not an argument of sqlite3 (it takes ['cp_max', 'cp_min', 'database'])"]


def test_reserved_characters_in_the_password_and_names_are_percent_encoded() -> None:
    from urllib.parse import unquote, urlsplit

    password = "p@ss:w/o#r%d ?&= x"
    cfg = parse_config({"server_name": "x.org", "database": {"name": "psycopg2", "args": {
        "user": "hs admin", "password": password, "dbname": "hs/db", "host": "db.internal", "port": 5433}}})
    dsn = cfg.database.postgres_dsn
    assert dsn == "postgresql://hs%20admin:p%40ss%3Aw%2Fo%23r%25d%20%3F%26%3D%20x@db.internal:5433/hs%2Fdb"
    uri = urlsplit(dsn)
    assert (unquote(uri.username or ""), unquote(uri.password or ""), uri.hostname, uri.port,
            unquote(uri.path[1:])) == ("hs admin", password, "db.internal", 5433, "hs/db")


def test_tls_session_and_address_arguments_reach_the_connection_uri() -> None:
    cfg = parse_config({"server_name": "x.org", "database": {"name": "psycopg2", "args": {
        "user": "hs", "host": "::1", "sslmode": "verify-full", "sslrootcert": "/etc/ssl/pg ca.pem",
        "application_name": "hs main", "connect_timeout": 5}}})
    assert cfg.database.postgres_dsn == ("postgresql://hs@[::1]:5432/hs?sslmode=verify-full"
                                         "&sslrootcert=/etc/ssl/pg%20ca.pem&application_name=hs%20main")
    assert cfg.database.args.connect_timeout == 5


def test_database_startup_timeout_is_a_duration() -> None:
    def db(**extra: object) -> dict:
        return {"server_name": "x.org", "database": {"name": "psycopg2", **extra}}

    assert parse_config(db()).database.startup_timeout == 60_000
    assert parse_config(db(startup_timeout="5m")).database.startup_timeout == 300_000
    assert parse_config(db(startup_timeout=0)).database.startup_timeout == 0
    assert problems(db(startup_timeout="soon")) == [
        "database.startup_timeout: 'soon' is not a duration such as 3600000 (ms), '1h' or '30m'"]


def test_redis_password_with_reserved_characters_is_percent_encoded() -> None:
    cfg = parse_config({"server_name": "x.org", "redis": {"enabled": True, "password": "a@b:c/d#e"}})
    assert cfg.redis.connection_url == "redis://:a%40b%3Ac%2Fd%23e@127.0.0.1:6379/0"


def test_media_config_problems_are_found_when_the_config_is_read(tmp_path: Path) -> None:
    cfg = parse_config({"server_name": "x", "max_upload_size": "10M", "unused_expiration_time": "1h"})
    assert (cfg.max_upload_size, cfg.unused_expiration_time) == (10 * 1024 * 1024, 3_600_000)
    cases = [
        ({"max_upload_size": "ten megs"}, "max_upload_size"),
        ({"url_preview_enabled": True}, "url_preview_ip_range_blacklist: required"),
        ({"url_preview_url_blacklist": [{"netloc": "^(unclosed"}]}, "url_preview_url_blacklist"),
        ({"media_storage_providers": [{"module": "s3_storage_provider.S3StorageProviderBackend",
                                       "config": {}}]}, "bucket"),
        ({"media_storage_providers": [{"module": "nope.Backend"}]}, "not a storage provider"),
        ({"thumbnail_sizes": [{"width": 0, "height": 10}]}, "thumbnail_sizes.0.width"),
        ({"url_preview_enabled": True, "url_preview_ip_range_blacklist": [],
          "oembed": {"additional_providers": ["missing.json"]}}, "oembed.additional_providers"),
    ]
    for extra, expected in cases:
        with pytest.raises(ConfigError) as err:
            parse_config({"server_name": "x", **extra}, config_dir=str(tmp_path))
        assert expected in str(err.value), (extra, str(err.value))
