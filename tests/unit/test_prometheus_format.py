"""`hs routes --format prometheus`: the scrape config Prometheus needs for the example cluster.

Why: a worker without a scrape target is invisible on the dashboard; the config is generated from
cluster.yaml so adding a worker there is enough, and this test keeps that true."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from hs.config import load_config
from hs.roles.proxy import metrics_address, render_proxy_config

CLUSTER = Path(__file__).resolve().parents[2] / "deploy" / "cluster.yaml"


def _targets(text: str) -> dict[str, str]:
    doc = yaml.safe_load(text)
    (job,) = doc["scrape_configs"]
    assert job["metrics_path"] == "/_synapse/metrics"
    out = {}
    for static in job["static_configs"]:
        (target,) = static["targets"]
        out[static["labels"]["instance"]] = target
    return out


def test_every_instance_with_a_metrics_listener_is_a_target() -> None:
    config = load_config(CLUSTER)
    targets = _targets(render_proxy_config(config, "prometheus"))
    expected = {}
    for instance in ["main", *config.workers]:
        address = metrics_address(config, instance)
        if address is not None:
            expected[instance] = f"{address[0]}:{address[1]}"
    assert targets == expected
    # The example cluster gives every instance a metrics listener, reached by its compose host name.
    assert set(targets) == {"main", *config.workers}
    assert targets["sync1"] == "sync1:9000"


def test_instances_without_a_metrics_listener_are_left_out() -> None:
    config = load_config(CLUSTER)
    config.workers["sync1"].listeners = [x for x in config.workers["sync1"].listeners if x.type != "metrics"]
    assert "sync1" not in _targets(render_proxy_config(config, "prometheus"))


def test_cli_prints_it() -> None:
    out = subprocess.run([sys.executable, "-m", "hs.cli", "routes", "-c", str(CLUSTER), "--format", "prometheus"],
                         capture_output=True, text=True, check=True).stdout
    assert _targets(out) == _targets(render_proxy_config(load_config(CLUSTER), "prometheus"))
