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
