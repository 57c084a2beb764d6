"""The route table: every endpoint, its endpoint group, and which instance serves it.

This one table is what `create_app` mounts and what `hs routes` turns into reverse-proxy config, so
the proxy and the processes can never disagree about who serves what.
"""

from __future__ import annotations

from hs.api.base import Route
from hs.config import HomeserverConfig
from hs.streams.registry import write_groups

# Endpoint groups a generic worker serves (the seed's generic_worker sections).
GENERIC_WORKER_GROUPS = {"sync", "client", "encryption", "registration_login", "event_sending",
                         "pagination", "account_data", "receipts", "presence", "pushrules", "user_directory",
                         "federation"}
# Route group -> the stream whose writer handles the group's writes (each stream says which groups
# are its own: `Stream.WRITE_GROUPS`).
STREAM_GROUPS = write_groups()
# The media repository's endpoints: main's (unless `enable_media_repo: false`) and media workers'.
MEDIA_GROUP = "media"


def all_routes() -> list[Route]:
    from hs.api.client import (
        account,
        account_data,
        admin,
        admin_federation,
        appservice_ping,
        directory,
        events,
        keys,
        misc,
        mutual_rooms,
        notifications,
        profile,
        pushers,
        relations,
        reports,
        rooms,
        search,
        spaces,
        sync,
        thirdparty,
        threepid,
        to_device,
        upgrade,
        user_directory,
        voip,
        whois,
    )
    from hs.api.client import presence as presence_api
    from hs.api.client import typing as typing_api

    routes: list[Route] = []
    for module in (misc, account, admin, profile, rooms, events, directory, sync, account_data, typing_api,
                   presence_api, user_directory, voip, threepid, pushers, notifications, reports,
                   spaces, search, relations, upgrade, mutual_rooms, thirdparty, appservice_ping, whois,
                   admin_federation):
        routes.extend(module.ROUTES)
    from hs.api.client import admin_users
    routes.extend(admin_users.ROUTES)  # Synapse's users admin API (next to the media one's)
    for module in (keys, to_device):
        routes.extend(module.ROUTES)
    from hs.api.client import pushrules, receipts

    for module in (receipts, pushrules):
        routes.extend(module.ROUTES)
    from hs.api.federation import e2ee as federation_e2ee
    from hs.api.federation import keys as key_server
    from hs.api.federation import misc as federation_misc
    from hs.api.federation import rooms as federation_rooms

    for module in (key_server, federation_misc, federation_rooms, federation_e2ee):
        routes.extend(module.ROUTES)
    from hs.api.federation import invites as federation_invites
    routes.extend(federation_invites.ROUTES)
    from hs.api.client import openid as client_openid
    from hs.api.client import sliding_sync
    from hs.api.federation import public as federation_public
    routes.extend([*federation_public.ROUTES, *client_openid.ROUTES, *sliding_sync.ROUTES])
    from hs.api.client import legacy_sync
    routes.extend(legacy_sync.ROUTES)
    from hs.api.client import admin_rooms, admin_tokens
    routes.extend([*admin_rooms.ROUTES, *admin_tokens.ROUTES])  # Synapse's rooms/tokens/notices admin API
    routes.extend(media_routes())
    return routes


def media_routes() -> list[Route]:
    """The media repository's endpoints (group `media`): served by main unless `enable_media_repo` is
    off, and by `media_repository` workers."""
    from hs.api.client import admin_media, media, media_preview, media_thumbnail
    from hs.api.federation import media as federation_media

    return [*media.ROUTES, *media_thumbnail.ROUTES, *media_preview.ROUTES, *admin_media.ROUTES,
            *federation_media.ROUTES]


def routes_for_instance(config: HomeserverConfig, instance: str) -> list[Route]:
    """Main serves everything; a worker serves the groups its app handles."""
    routes = all_routes()
    app = config.app_for(instance).removeprefix("synapse.app.")
    if app == "main":
        return [r for r in routes if r.group != MEDIA_GROUP or config.enable_media_repo]
    if app == "media_repository":
        return [r for r in routes if r.group == MEDIA_GROUP]
    if app == "generic_worker":
        # Stream endpoints are mounted everywhere: a non-writer forwards the write to the writer.
        return [r for r in routes if r.group in GENERIC_WORKER_GROUPS or r.group in STREAM_GROUPS]
    return []
