"""Exactly the configured process runs each background duty."""

from __future__ import annotations

from hs.config import parse_config
from hs.roles.duties import BACKGROUND_TASKS, FEDERATION_SENDER, PUSHER, USER_DIRECTORY, duties_for

CLUSTER = {
    "server_name": "example.org",
    "database": {"engine": "postgres", "dsn": "postgresql://x@127.0.0.1/hs"},
    "redis": {"enabled": True},
    "worker_replication_secret": "s",
    "instance_map": {"main": {"host": "127.0.0.1", "port": 9093}, "bg": {"host": "127.0.0.1", "port": 9094}},
    "workers": {"bg": {"app": "generic_worker"}, "fed1": {"app": "federation_sender"},
                "push1": {"app": "pusher"}},
    "run_background_tasks_on": "bg",
    "federation_sender_instances": ["fed1"],
    "pusher_instances": ["push1"],
    "update_user_directory_from_worker": "bg",
}


def test_monolith_runs_everything() -> None:
    cfg = parse_config({"server_name": "example.org"})
    assert {BACKGROUND_TASKS, FEDERATION_SENDER, PUSHER, USER_DIRECTORY} <= duties_for(cfg, "main")


def test_cluster_moves_duties_to_their_workers() -> None:
    cfg = parse_config(CLUSTER)
    assert BACKGROUND_TASKS not in duties_for(cfg, "main")
    assert FEDERATION_SENDER not in duties_for(cfg, "main")
    assert PUSHER not in duties_for(cfg, "main")
    assert duties_for(cfg, "bg") >= {BACKGROUND_TASKS, USER_DIRECTORY}
    assert duties_for(cfg, "fed1") == {FEDERATION_SENDER}
    assert duties_for(cfg, "push1") == {PUSHER}


def test_duty_switches_turn_jobs_off() -> None:
    cfg = parse_config({"server_name": "example.org", "send_federation": False, "start_pushers": False})
    assert FEDERATION_SENDER not in duties_for(cfg, "main")
    assert PUSHER not in duties_for(cfg, "main")


def test_users_are_sharded_across_pusher_instances() -> None:
    from hs.roles.duties import pusher_instance_for

    two = parse_config({**CLUSTER, "workers": {**CLUSTER["workers"], "push2": {"app": "pusher"}},
                        "pusher_instances": ["push1", "push2"]})
    assert PUSHER in duties_for(two, "push1") and PUSHER in duties_for(two, "push2")
    users = [f"@user{i}:example.org" for i in range(200)]
    shards = [pusher_instance_for(two, u) for u in users]
    # Each user has exactly one instance, the same every time (every process agrees), and both get users.
    assert shards == [pusher_instance_for(two, u) for u in users]
    assert 60 < shards.count("push1") < 140 and shards.count("push1") + shards.count("push2") == 200
    # One pusher instance, or a monolith: it has every user.
    assert {pusher_instance_for(parse_config(CLUSTER), u) for u in users} == {"push1"}
    assert {pusher_instance_for(parse_config({"server_name": "example.org"}), u) for u in users} == {"main"}
    off = parse_config({"server_name": "example.org", "start_pushers": False})
    assert pusher_instance_for(off, users[0]) is None


def test_media_jobs_run_on_the_named_media_worker_when_main_does_not_serve_media() -> None:
    from hs.roles.duties import MEDIA_BACKGROUND

    cfg = parse_config({**CLUSTER, "enable_media_repo": False, "media_instance_running_background_jobs": "media1",
                        "workers": {**CLUSTER["workers"], "media1": {"app": "media_repository"}}})  # type: ignore[dict-item]
    assert [i for i in ("main", *cfg.workers) if MEDIA_BACKGROUND in duties_for(cfg, i)] == ["media1"]
    # Main runs them by default, unless it does not run the media repository at all.
    assert MEDIA_BACKGROUND in duties_for(parse_config({"server_name": "example.org"}), "main")
    off = parse_config({"server_name": "example.org", "enable_media_repo": False})
    assert MEDIA_BACKGROUND not in duties_for(off, "main")
