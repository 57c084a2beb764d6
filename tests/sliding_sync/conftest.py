"""Fixtures for sliding sync tests: `target`, the server and shape a test runs against.

By default each test runs against hs in both shapes: unstable on SQLite, v4 on PostgreSQL. Set
`HS_SS_TARGETS=hs-unstable,hs-v4,synapse` (any subset) to run the same bodies against a real Synapse
too (unstable shape only), which is how the expectations were checked; the Synapse comparison test
(test_compare_synapse.py) always starts one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.federation.synapse import SynapseServer
from tests.sliding_sync.client import Target
from tests.sliding_sync.synapse_server import running_synapse

DEFAULT_TARGETS = "hs-unstable,hs-v4"


def _targets() -> list[str]:
    return [t.strip() for t in os.environ.get("HS_SS_TARGETS", DEFAULT_TARGETS).split(",") if t.strip()]


@pytest.fixture(scope="session")
def session_synapse(tmp_path_factory: pytest.TempPathFactory, pg_base_dsn: str) -> Iterator[SynapseServer]:
    """One Synapse for the session (started in ~7-20 s); tests keep apart by unique user names."""
    with running_synapse(tmp_path_factory.mktemp("ss-synapse"), pg_base_dsn) as server:
        yield server


def synapse_target(server: SynapseServer) -> Target:
    return Target("synapse", server.base_url, server.server_name, "unstable", str(server.cert.ca_path),
                  {"server": server})


async def hs_target(make_server: Any, shape: str, engine: str = "sqlite", **config: Any) -> Target:
    srv = await make_server(engine, **config)
    return Target("hs", srv.base_url, srv.config.server_name, shape, None, {"server": srv})


@pytest.fixture(params=_targets())
async def target(request: pytest.FixtureRequest, make_server: Any) -> Target:
    """The server and shape under test: hs speaking unstable (on SQLite) or v4 (on PostgreSQL, so both
    engines are covered without running everything twice), or Synapse (unstable)."""
    name = str(request.param)
    if name == "synapse":
        return synapse_target(request.getfixturevalue("session_synapse"))
    shape = name.removeprefix("hs-")
    return await hs_target(make_server, shape, "postgres" if shape == "v4" else "sqlite")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path
