"""The media repository's upload and download endpoints (client-server API, "Content repository").

Downloads: the authenticated `/_matrix/client/v1/media/download/...` (spec v1.11) and the legacy
unauthenticated `/_matrix/media/{v3,r0,v1}/download/...`, which do not serve media uploaded while
`enable_authenticated_media` is on (Synapse's behaviour). Uploads stay under `/_matrix/media/`, as the
spec keeps them.
"""

from __future__ import annotations

from aiohttp import web

from hs.api.base import CLIENT_V1, HandlerResult, Route, client_address, get_hs, get_requester
from hs.api.params import query_bool, query_int, query_str
from hs.errors import invalid_param
from hs.media.serving import stream_file

MEDIA_GROUP = "media"
MEDIA_LEGACY = ("/_matrix/media/v3", "/_matrix/media/r0", "/_matrix/media/v1")
MEDIA_UPLOAD = ("/_matrix/media/v3", "/_matrix/media/r0", "/_matrix/media/v1")
CLIENT_MEDIA = tuple(p + "/media" for p in CLIENT_V1)
UPLOAD_CHUNK = 256 * 1024
MAX_ID_LENGTH = 255
MAX_FILENAME_LENGTH = 255


def _declared_length(request: web.Request) -> int | None:
    return request.content_length


def _path_part(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not value or len(value) > MAX_ID_LENGTH:
        raise invalid_param(f"Invalid {name}")
    return value


async def config(request: web.Request) -> HandlerResult:
    await get_requester(request)
    return 200, {"m.upload.size": get_hs(request).config.max_upload_size}


async def upload(request: web.Request) -> HandlerResult:
    requester = await get_requester(request)
    filename = query_str(request, "filename", max_length=MAX_FILENAME_LENGTH)
    uri = await get_hs(request).media.upload(requester.user_id, request.content.iter_chunked(UPLOAD_CHUNK),
                                            _declared_length(request), request.headers.get("Content-Type"),
                                            filename)
    return 200, {"content_uri": uri}


async def create(request: web.Request) -> HandlerResult:
    requester = await get_requester(request)
    uri, expires = await get_hs(request).media.create(requester.user_id)
    return 200, {"content_uri": uri, "unused_expires_at": expires}


async def upload_reserved(request: web.Request) -> HandlerResult:
    requester = await get_requester(request)
    filename = query_str(request, "filename", max_length=MAX_FILENAME_LENGTH)
    server_name, media_id = _path_part(request, "serverName"), _path_part(request, "mediaId")
    await get_hs(request).media.upload_reserved(
        requester.user_id, server_name, media_id, request.content.iter_chunked(UPLOAD_CHUNK),
        _declared_length(request), request.headers.get("Content-Type"), filename)
    # The spec's answer is `{}` (Synapse's too); the URI is added because mautrix, which bridges use,
    # reads `content_uri` from it and fails the upload without it.
    return 200, {"content_uri": f"mxc://{server_name}/{media_id}"}


async def _download(request: web.Request, *, legacy: bool) -> web.StreamResponse:
    hs = get_hs(request)
    server_name, media_id = _path_part(request, "serverName"), _path_part(request, "mediaId")
    timeout_ms = query_int(request, "timeout_ms", 20_000, maximum=3_600_000)
    allow_remote = query_bool(request, "allow_remote", True)
    info = await hs.media.get_media(server_name, media_id, legacy=legacy, allow_remote=allow_remote,
                                    timeout_ms=timeout_ms, client_address=client_address(request))
    backend, key, size = await hs.media.locate(info)
    filename = request.match_info.get("fileName") or info.upload_name
    return await stream_file(request, backend, key, size, info.media_type, filename)


async def download(request: web.Request) -> HandlerResult:
    await get_requester(request)
    return await _download(request, legacy=False)


async def download_legacy(request: web.Request) -> HandlerResult:
    return await _download(request, legacy=True)


ROUTES = [
    Route("GET", "/config", config, MEDIA_GROUP, CLIENT_MEDIA, resource="media"),
    Route("GET", "/config", config, MEDIA_GROUP, MEDIA_LEGACY, resource="media"),
    Route("POST", "/upload", upload, MEDIA_GROUP, MEDIA_UPLOAD, resource="media"),
    Route("POST", "/create", create, MEDIA_GROUP, ("/_matrix/media/v1",), resource="media"),
    Route("PUT", "/upload/{serverName}/{mediaId}", upload_reserved, MEDIA_GROUP, ("/_matrix/media/v3",),
          resource="media"),
    Route("GET", "/download/{serverName}/{mediaId}", download, MEDIA_GROUP, CLIENT_MEDIA, resource="media"),
    Route("GET", "/download/{serverName}/{mediaId}/{fileName}", download, MEDIA_GROUP, CLIENT_MEDIA,
          resource="media"),
    Route("GET", "/download/{serverName}/{mediaId}", download_legacy, MEDIA_GROUP, MEDIA_LEGACY, resource="media"),
    Route("GET", "/download/{serverName}/{mediaId}/{fileName}", download_legacy, MEDIA_GROUP, MEDIA_LEGACY,
          resource="media"),
]
