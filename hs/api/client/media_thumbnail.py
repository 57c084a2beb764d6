"""Thumbnail endpoints (client-server API, "Content repository" / "Thumbnails"): the authenticated
`/_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}` (spec v1.11) and the legacy
unauthenticated `/_matrix/media/{v3,r0,v1}/thumbnail/...`, which, like the legacy downloads, do not
serve media uploaded while `enable_authenticated_media` is on (404).

`width` and `height` are required (1 or more; larger than `MAX_DIMENSION` is taken as
`MAX_DIMENSION`), `method` is `crop` or `scale` (default `scale`), `animated` asks for an animated
thumbnail. Which thumbnail is served, and the errors, are hs/media/thumbnails.py's.
"""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, client_address, get_hs, get_requester
from hs.api.client.media import CLIENT_MEDIA, MAX_ID_LENGTH, MEDIA_GROUP, MEDIA_LEGACY
from hs.api.params import query_bool, query_enum, query_int
from hs.errors import invalid_param, missing_param
from hs.media.serving import stream_file

MAX_DIMENSION = 65_535
METHODS = ("crop", "scale")


def _path_part(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not value or len(value) > MAX_ID_LENGTH:
        raise invalid_param(f"Invalid {name}")
    return value


def _dimension(request: web.Request, name: str) -> int:
    value = query_int(request, name, None, minimum=1, maximum=MAX_DIMENSION, clamp=True)
    if value is None:
        raise missing_param(f"Missing '{name}'")
    return value


async def _thumbnail(request: web.Request, *, legacy: bool) -> web.StreamResponse:
    hs = get_hs(request)
    server_name, media_id = _path_part(request, "serverName"), _path_part(request, "mediaId")
    width, height = _dimension(request, "width"), _dimension(request, "height")
    method = query_enum(request, "method", METHODS, "scale") or "scale"
    animated = query_bool(request, "animated", False)
    timeout_ms = query_int(request, "timeout_ms", 20_000, maximum=3_600_000)
    allow_remote = query_bool(request, "allow_remote", True)
    info = await hs.media.get_media(server_name, media_id, legacy=legacy, allow_remote=allow_remote,
                                    timeout_ms=timeout_ms, client_address=client_address(request))
    backend, key, size, media_type = await hs.media_thumbnails.select(info, width, height, method, animated)
    extension = media_type.rpartition("/")[2]
    return await stream_file(request, backend, key, size, media_type, f"thumbnail.{extension}")


async def thumbnail(request: web.Request) -> HandlerResult:
    await get_requester(request)
    return await _thumbnail(request, legacy=False)


async def thumbnail_legacy(request: web.Request) -> HandlerResult:
    return await _thumbnail(request, legacy=True)


ROUTES = [
    Route("GET", "/thumbnail/{serverName}/{mediaId}", thumbnail, MEDIA_GROUP, CLIENT_MEDIA, resource="media"),
    Route("GET", "/thumbnail/{serverName}/{mediaId}", thumbnail_legacy, MEDIA_GROUP, MEDIA_LEGACY,
          resource="media"),
]
