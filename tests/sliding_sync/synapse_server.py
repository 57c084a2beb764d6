"""A plain single Synapse for comparing sliding sync answers: open registration, no federation use,
on a fresh PostgreSQL database, started once per session.

Reuses tests/federation/synapse.py (its cached virtualenv, config and lifecycle) with registration
opened, so tests register users on Synapse and hs the same way (`/register` with m.login.dummy).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.federation.cluster_conftest_helpers import run_coroutine
from tests.federation.synapse import SynapseServer, create_synapse_database, ensure_synapse
from tests.federation.tls import TestCA
from tests.services import drop_database

OPEN_REGISTRATION = {
    "enable_registration": True,
    "enable_registration_without_verification": True,
    # Typing and receipts are compared too; presence is not part of sliding sync.
    "presence": {"enabled": False},
}


@contextmanager
def running_synapse(data_dir: Path, pg_base_dsn: str) -> Iterator[SynapseServer]:
    """A started Synapse (https on loopback, trusting a throwaway CA), stopped and its database
    dropped on exit."""
    python = ensure_synapse()
    dsn = run_coroutine(create_synapse_database(pg_base_dsn))
    ca = TestCA(data_dir / "ca")
    server = SynapseServer(python, data_dir / "synapse", dsn, ca.issue(data_dir / "tls"),
                           dict(OPEN_REGISTRATION))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        run_coroutine(drop_database(dsn))
