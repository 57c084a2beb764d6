"""hs as a test dependency: throwaway homeservers for the tests of Matrix bots, bridges and clients.

The pytest plugin (`hs.testing.plugin`, loaded through the `pytest11` entry point) gives fixtures; the
classes behind them are usable without pytest:

- `TestHomeServer`: in-process, on the caller's event loop (hs.testing.server)
- `ThreadedHomeServer`: in-process, on an event loop of its own in a thread (hs.testing.process)
- `HsProcess`: `hs run` as a subprocess on a generated config (hs.testing.process)
- `running_cluster` / `ClusterServer`: a worker cluster behind nginx (hs.testing.cluster)
- `register_user` / `register_user_sync`: a user through the registration API

Names are imported on first use: pytest loads this package for the plugin in every session, and most
sessions never start a homeserver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hs.testing.cluster import ClusterServer, running_cluster
    from hs.testing.process import HsProcess, ThreadedHomeServer, register_user_sync
    from hs.testing.server import Client, RegisteredUser, TestHomeServer, register_user

_EXPORTS = {
    "TestHomeServer": "hs.testing.server", "Client": "hs.testing.server",
    "RegisteredUser": "hs.testing.server", "register_user": "hs.testing.server",
    "HsProcess": "hs.testing.process", "ThreadedHomeServer": "hs.testing.process",
    "register_user_sync": "hs.testing.process",
    "ClusterServer": "hs.testing.cluster", "running_cluster": "hs.testing.cluster",
}

__all__ = ["Client", "ClusterServer", "HsProcess", "RegisteredUser", "TestHomeServer", "ThreadedHomeServer",
           "register_user", "register_user_sync", "running_cluster"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hs.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
