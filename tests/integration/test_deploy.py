"""Keep deploy/ honest (no Docker engine runs here): the compose file's services are the example
cluster's instances with matching ports, and the nginx config it mounts is what `hs routes` prints."""

from __future__ import annotations

from pathlib import Path

import yaml

from hs.config import load_config
from hs.roles.proxy import render_proxy_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
INFRA = {"postgres", "redis", "nginx"}


def _role(command: list[str]) -> str:
    return command[command.index("--role") + 1] if "--role" in command else "main"


def test_compose_services_are_the_cluster_instances() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    cluster = load_config(DEPLOY / "cluster.yaml")
    services = compose["services"]
    instances = {name: svc for name, svc in services.items() if name not in INFRA}
    assert {_role(svc["command"]) for svc in instances.values()} == {"main", *cluster.workers}
    for name, svc in instances.items():
        role = _role(svc["command"])
        assert name == role, f"service {name} runs role {role}"
        ports = {str(listener.port) for listener in cluster.listeners_for(role)} - {"9000"}
        assert set(svc["expose"]) - {"9000"} == ports, f"{name}: exposed {svc['expose']} vs listeners {ports}"
        assert "./cluster.yaml:/config/cluster.yaml:ro" in svc["volumes"]
        assert role == "main" or cluster.instance_map[role].host == name
    assert cluster.instance_map["main"].host == "main"
    # Health: each instance's check asks /health on a port it listens on; nginx waits for them, and
    # the instances for PostgreSQL and Redis.
    for name, svc in instances.items():
        probe = " ".join(svc["healthcheck"]["test"])
        port = probe.split("127.0.0.1:")[1].split("/")[0]
        assert port in {str(listener.port) for listener in cluster.listeners_for(_role(svc["command"]))}, name
        assert "/health" in probe
        assert svc["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                     "redis": {"condition": "service_healthy"}}
    assert all(services[s]["healthcheck"] for s in ("postgres", "redis"))
    assert set(services["nginx"]["depends_on"]) <= set(instances)
    assert all(v == {"condition": "service_healthy"} for v in services["nginx"]["depends_on"].values())


def test_nginx_config_is_what_hs_routes_prints() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mount = next(v for v in compose["services"]["nginx"]["volumes"] if "hs.conf" in v)
    local = DEPLOY / mount.split(":")[0]
    cluster = load_config(DEPLOY / "cluster.yaml")
    assert local.read_text() == render_proxy_config(cluster, "nginx"), \
        "deploy/nginx/hs.conf is stale: run `hs routes -c deploy/cluster.yaml > deploy/nginx/hs.conf`"
    published = compose["services"]["nginx"]["ports"]
    assert published == ["8008:8008"]


def test_every_upstream_in_the_nginx_config_is_a_cluster_listener() -> None:
    cluster = load_config(DEPLOY / "cluster.yaml")
    text = (DEPLOY / "nginx" / "hs.conf").read_text()
    servers = {line.split()[1].rstrip(";") for line in text.splitlines() if line.strip().startswith("server ") and "{" not in line}
    servers |= {tok.split("//")[1].rstrip(";") for tok in text.split() if tok.startswith("http://") and ":" in tok[7:]}
    known = {f"{cluster.instance_map.get(i).host if i in cluster.instance_map else 'main'}:{listener.port}"
             for i in ["main", *cluster.workers] for listener in cluster.listeners_for(i)}
    assert servers <= known
