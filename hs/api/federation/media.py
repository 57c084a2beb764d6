"""The federation media endpoints (server-server API, "Content repository", spec v1.11): other servers
download this server's media, and thumbnails of it, X-Matrix authenticated, as multipart/mixed
(hs/media/multipart.py). Only local media is served (another server's media is not proxied), and
never quarantined media."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs
from hs.api.params import query_bool, query_enum, query_int
from hs.errors import invalid_param, missing_param
from hs.federation.request_auth import authenticate_origin
from hs.media.multipart import stream_multipart

MEDIA_GROUP = "media"
V1_MEDIA = "/_matrix/federation/v1/media"
MAX_ID_LENGTH = 255
MAX_WAIT_MS = 3_600_000
MAX_DIMENSION = 65_535  # larger is taken as this (as on the client endpoint)


def _media_id(request: web.Request) -> str:
    value = request.match_info["mediaId"]
    if not value or len(value) > MAX_ID_LENGTH:
        raise invalid_param("Invalid mediaId")
    return value


def _dimension(request: web.Request, name: str) -> int:
    value = query_int(request, name, None, minimum=1, maximum=MAX_DIMENSION, clamp=True)
    if value is None:
        raise missing_param(f"Missing '{name}'")
    return value


async def download(request: web.Request) -> HandlerResult:
    await authenticate_origin(request)
    hs = get_hs(request)
    media_id = _media_id(request)
    timeout_ms = query_int(request, "timeout_ms", 20_000, maximum=MAX_WAIT_MS)
    info = await hs.media.get_media(hs.server_name, media_id, legacy=False, allow_remote=False,
                                    timeout_ms=timeout_ms)
    backend, key, size = await hs.media.locate(info)
    return await stream_multipart(request, backend, key, size, info.media_type, info.upload_name)


async def thumbnail(request: web.Request) -> HandlerResult:
    await authenticate_origin(request)
    hs = get_hs(request)
    media_id = _media_id(request)
    width, height = _dimension(request, "width"), _dimension(request, "height")
    method = query_enum(request, "method", ("crop", "scale"), "scale") or "scale"
    animated = query_bool(request, "animated", False)
    timeout_ms = query_int(request, "timeout_ms", 20_000, maximum=MAX_WAIT_MS)
    info = await hs.media.get_media(hs.server_name, media_id, legacy=False, allow_remote=False,
                                    timeout_ms=timeout_ms)
    backend, key, size, media_type = await hs.media_thumbnails.select(info, width, height, method, animated)
    extension = media_type.rpartition("/")[2]
    return await stream_multipart(request, backend, key, size, media_type, f"thumbnail.{extension}")


ROUTES = [
    Route("GET", V1_MEDIA + "/download/{mediaId}", download, MEDIA_GROUP, (), resource="media"),
    Route("GET", V1_MEDIA + "/thumbnail/{mediaId}", thumbnail, MEDIA_GROUP, (), resource="media"),
]
