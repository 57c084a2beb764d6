"""The route table: every endpoint, its endpoint group, and which instance serves it.

This one table is what `create_app` mounts and what `hs routes` turns into reverse-proxy config, so
the proxy and the processes can never disagree about who serves what.
"""

from __future__ import annotations

from hs.api.base import Route
from hs.config import HomeserverConfig

# Endpoint groups a generic worker serves (the seed's generic_worker sections).
GENERIC_WORKER_GROUPS = {"sync", "client", "encryption", "registration_login", "event_sending",
                         "pagination", "account_data", "receipts", "presence", "pushrules"}
# Groups owned by a stream's writer: requests go to that writer.
STREAM_GROUPS = {"typing": "typing", "to_device": "to_device", "account_data": "account_data",
                 "receipts": "receipts", "presence": "presence"}


def all_routes() -> list[Route]:
    from hs.api.client import account, admin, directory, events, misc, profile, rooms, sync

    routes: list[Route] = []
    for module in (misc, account, admin, profile, rooms, events, directory, sync):
        routes.extend(module.ROUTES)
    return routes


def routes_for_instance(config: HomeserverConfig, instance: str) -> list[Route]:
    """Main serves everything; a worker serves the groups its app handles."""
    routes = all_routes()
    app = config.app_for(instance)
    if app == "main":
        return routes
    if app == "generic_worker":
        owned = {group for group, stream in STREAM_GROUPS.items()
                 if instance in getattr(config.stream_writers, stream, [])}
        return [r for r in routes if r.group in GENERIC_WORKER_GROUPS or r.group in owned]
    return []
