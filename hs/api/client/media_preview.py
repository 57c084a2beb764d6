"""GET /_matrix/client/v1/media/preview_url (and the legacy /_matrix/media/{v3,r0,v1}/preview_url).

An access token is required on every path, the legacy ones included (as Synapse does). With
`url_preview_enabled` off the endpoint answers 404 M_UNRECOGNIZED, as if it were not there (Synapse
does not mount it). The work is hs/media/preview.py's.
"""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, get_requester
from hs.api.params import query_int, query_str
from hs.errors import invalid_param

MAX_URL_LENGTH = 8192  # characters


async def preview_url(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    if not hs.config.url_preview_enabled:
        raise web.HTTPNotFound()  # the app answers 404 M_UNRECOGNIZED
    await get_requester(request)
    url = query_str(request, "url", required=True, max_length=MAX_URL_LENGTH) or ""
    # `ts` (the point in time the client would like a preview for) is checked but not used: no history
    # of pages is kept, so the newest preview is the answer (the spec allows a newer one).
    query_int(request, "ts", None)
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise invalid_param("url must be an http or https URL")
    return 200, await hs.url_previewer.preview(url)


PREFIXES = ("/_matrix/client/v1/media", "/_matrix/media/v3", "/_matrix/media/r0", "/_matrix/media/v1")
ROUTES: list[Route] = [
    Route("GET", "/preview_url", preview_url, group="media", prefixes=PREFIXES, resource="media"),
]
