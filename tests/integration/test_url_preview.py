"""URL previews over real HTTP: a homeserver previewing pages of a test web server on 127.0.0.1 (and
127.0.0.2), with the SSRF checks of `url_preview_ip_range_blacklist`/`whitelist` and
`url_preview_url_blacklist` on the first URL, on every redirect and on every resolved address."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from PIL import Image

from hs.media import safe_fetch
from tests.harness import Client, TestHomeServer, user
from tests.services import free_port

BLACKLIST = ["127.0.0.0/8", "10.0.0.0/8", "::1/128", "169.254.0.0/16"]
PREVIEW = "/_matrix/client/v1/media/preview_url"


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


PNG = _png(64, 48)
PAGE = """<!doctype html><html><head><title>Fallback title</title>
<meta property="og:title" content="The Test Page">
<meta property="og:description" content="A page served to hs's previewer.">
<meta property="og:image" content="/image.png">
</head><body><p>Body text.</p></body></html>"""
PLAIN_PAGE = """<html><head><title>Only a title</title></head>
<body><nav>Menu</nav><p>First paragraph of the page.</p></body></html>"""
OEMBED_PAGE = """<html><head><title>Page title</title>
<link rel="alternate" type="application/json+oembed" href="/oembed.json"></head><body></body></html>"""
OEMBED = b'{"version": "1.0", "type": "rich", "title": "From oEmbed", "author_name": "Someone", ' \
         b'"html": "<blockquote><p>Embedded words</p></blockquote>"}'


class WebSite:
    """A test web server on 127.0.0.1 and 127.0.0.2 (same port): which local address each request
    reached, and how many requests each path had."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: dict[str, int] = {}
        self.reached: list[str] = []
        self.runner: web.AppRunner | None = None
        self.slow_release = asyncio.Event()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] = self.hits.get(path, 0) + 1
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        self.reached.append(sock[0] if sock else "?")
        if path in ("/page", "/secret/page"):
            return web.Response(text=PAGE, content_type="text/html")
        if path == "/plain-page":
            return web.Response(text=PLAIN_PAGE, content_type="text/html")
        if path == "/oembed-page":
            return web.Response(text=OEMBED_PAGE, content_type="text/html")
        if path == "/oembed.json":
            return web.Response(body=OEMBED, content_type="application/json")
        if path == "/provider/oembed":
            assert request.query["format"] == "json"
            return web.json_response({"version": "1.0", "type": "video", "title": "Video " + request.query["url"],
                                      "provider_name": "Test Tube", "thumbnail_url": self.url("/image.png")})
        if path == "/image.png":
            return web.Response(body=PNG, content_type="image/png")
        if path == "/redirect":
            raise web.HTTPFound(request.query["to"])
        if path == "/loop":
            raise web.HTTPFound("/loop")
        if path == "/big":
            return web.Response(text="<html><body>" + "x" * 200_000 + "</body></html>", content_type="text/html")
        if path == "/big-chunked":
            resp = web.StreamResponse(headers={"Content-Type": "text/html"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for _ in range(50):
                await resp.write(b"<p>" + b"y" * 8192 + b"</p>")
            await resp.write_eof()
            return resp
        if path == "/text":
            return web.Response(text="just text", content_type="text/plain")
        if path == "/missing":
            raise web.HTTPNotFound()
        if path == "/slow-page":
            await self.slow_release.wait()
            return web.Response(text=PAGE, content_type="text/html")
        raise web.HTTPNotFound()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        for host in ("127.0.0.1", "127.0.0.2"):
            await web.TCPSite(self.runner, host, self.port).start()

    async def stop(self) -> None:
        self.slow_release.set()
        if self.runner is not None:
            await self.runner.cleanup()


class FakeResolver(AbstractResolver):
    """Names of our choosing: each name's list of answers is used in turn (the last one stays)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: dict[str, int] = {}

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[ResolveResult]:
        if host not in self.answers:
            raise OSError(f"no such host {host}")
        n = self.calls.get(host, 0)
        self.calls[host] = n + 1
        addresses = self.answers[host][min(n, len(self.answers[host]) - 1)]
        return [{"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST} for a in addresses]

    async def close(self) -> None:
        return None


@pytest.fixture
async def site() -> AsyncIterator[WebSite]:
    s = WebSite()
    await s.start()
    yield s
    await s.stop()


async def start(make_server: Any, engine: str = "sqlite", **config: Any) -> tuple[TestHomeServer, Client]:
    settings: dict[str, Any] = {"url_preview_enabled": True, "url_preview_ip_range_blacklist": BLACKLIST}
    settings.update(config)
    srv = await make_server(engine, **settings)
    return srv, await user(srv, "alice")


async def preview(client: Client, url: str, path: str = PREVIEW) -> tuple[int, Any]:
    return await client.request("GET", path, params={"url": url})


# -- the address checks -------------------------------------------------------------------------------
async def test_loopback_refused_by_default(make_server: Any, site: WebSite) -> None:
    _, alice = await start(make_server)
    status, body = await preview(alice, site.url("/page"))
    assert status == 403, body
    assert "IP address blocked" in body["error"]
    # Other spellings of loopback: resolved (or parsed) and refused just the same.
    for host in ("localhost", "2130706433", "127.1", "0x7f000001", "[::ffff:127.0.0.1]", "0", "[::1]"):
        status, body = await preview(alice, site.url("/page", host))
        assert status in (403, 502), (host, body)
    assert site.hits == {}  # nothing was sent


async def test_whitelisted_page_previewed_with_its_image_stored(make_server: Any, site: WebSite, engine: str) -> None:
    srv, alice = await start(make_server, engine, url_preview_ip_range_whitelist=["127.0.0.1/32"])
    status, body = await preview(alice, site.url("/page"))
    assert status == 200, body
    assert body["og:title"] == "The Test Page"
    assert body["og:description"] == "A page served to hs's previewer."
    assert body["og:image"].startswith("mxc://test.local/")
    assert body["og:image:type"] == "image/png"
    assert (body["og:image:width"], body["og:image:height"]) == (64, 48)
    assert body["matrix:image:size"] == len(PNG)
    media_id = body["og:image"].removeprefix("mxc://test.local/")
    async with aiohttp.ClientSession() as session, session.get(
            f"{srv.base_url}/_matrix/client/v1/media/download/test.local/{media_id}",
            headers={"Authorization": f"Bearer {alice.token}"}) as resp:
        assert resp.status == 200
        assert await resp.read() == PNG


async def test_legacy_paths_need_a_token_too(make_server: Any, site: WebSite) -> None:
    _, alice = await start(make_server, url_preview_ip_range_whitelist=["127.0.0.1/32"])
    for path in ("/_matrix/media/v3/preview_url", "/_matrix/media/r0/preview_url", "/_matrix/media/v1/preview_url"):
        status, body = await preview(alice, site.url("/plain-page"), path)
        assert status == 200, body
        assert body["og:title"] == "Only a title"
        assert body["og:description"] == "First paragraph of the page."
        status, body = await alice.request("GET", path, params={"url": site.url("/page")}, auth=False)
        assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_redirect_to_a_blocked_address_refused(make_server: Any, site: WebSite) -> None:
    _, alice = await start(make_server, url_preview_ip_range_whitelist=["127.0.0.1/32"])
    status, body = await preview(alice, site.url("/redirect?to=" + site.url("/page", "127.0.0.2")))
    assert status == 403, body
    assert "IP address blocked" in body["error"]
    assert site.reached == ["127.0.0.1"]  # the redirect was read; 127.0.0.2 was never asked
    # The same redirect to an allowed address is followed.
    status, body = await preview(alice, site.url("/redirect?to=/plain-page"))
    assert status == 200, body
    assert body["og:title"] == "Only a title"


async def test_redirect_limit(make_server: Any, site: WebSite) -> None:
    _, alice = await start(make_server, url_preview_ip_range_whitelist=["127.0.0.1/32"])
    status, body = await preview(alice, site.url("/loop"))
    assert status == 502, body
    assert "redirects" in body["error"]
    assert site.hits["/loop"] == 6  # the first request and 5 redirects


async def test_names_resolving_to_blocked_addresses_refused(make_server: Any, site: WebSite) -> None:
    srv, alice = await start(make_server, url_preview_ip_range_whitelist=["127.0.0.1/32"])
    resolver = FakeResolver({"good.test": [["127.0.0.1"]], "evil.test": [["127.0.0.2"]],
                             "mixed.test": [["127.0.0.1", "127.0.0.2"]], "v6.test": [["::1"]]})
    srv.hs.url_previewer.fetcher.resolver = resolver
    status, body = await preview(alice, site.url("/plain-page", "good.test"))
    assert status == 200, body
    for name in ("evil.test", "mixed.test", "v6.test", "unknown.test"):
        status, body = await preview(alice, site.url("/plain-page", name))
        assert (status, body["errcode"]) == (502, "M_UNKNOWN"), (name, body)
        assert "DNS resolution failure" in body["error"]
    # A redirect to a name resolving to a blocked address is refused the same way.
    status, body = await preview(alice, site.url("/redirect?to=" + site.url("/page", "evil.test")))
    assert status == 502, body
    assert site.reached == ["127.0.0.1", "127.0.0.1"]


async def test_dns_rebinding_connects_to_the_checked_address(make_server: Any, site: WebSite) -> None:
    """A name answering an allowed address first and a blocked one afterwards: the connection goes
    to the address that was checked, and the name is resolved once for it."""
    srv, alice = await start(make_server, url_preview_ip_range_whitelist=["127.0.0.1/32"])
    resolver = FakeResolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    srv.hs.url_previewer.fetcher.resolver = resolver
    status, body = await preview(alice, site.url("/plain-page", "rebind.test"))
    assert status == 200, body
    assert site.reached == ["127.0.0.1"]
    assert resolver.calls == {"rebind.test": 1}
    # The next fetch (a new URL: not cached) gets the rebound answer, and is refused.
    status, body = await preview(alice, site.url("/page", "rebind.test"))
    assert status == 502, body
    assert site.reached == ["127.0.0.1"]


# -- other refusals -----------------------------------------------------------------------------------
async def test_url_blacklist_on_the_url_and_on_redirects(make_server: Any, site: WebSite) -> None:
    _, alice = await start(make_server, url_preview_ip_range_whitelist=["127.0.0.1/32"],
                           url_preview_url_blacklist=[{"netloc": "127.0.0.1:*", "path": "/secret/*"},
                                                      {"path": "^/ima"}])
    status, body = await preview(alice, site.url("/secret/page"))
    assert status == 403, body
    assert "blacklist" in body["error"]
    status, body = await preview(alice, site.url("/redirect?to=/secret/page"))
    assert status == 403, body
    # The page itself is allowed, but its image's URL is blacklisted: no image in the preview.
    status, body = await preview(alice, site.url("/page"))
    assert status == 200, body
    assert body["og:title"] == "The Test Page"
    assert "og:image" not in body
    assert "/secret/page" not in site.hits and "/image.png" not in site.hits


async def test_max_spider_size(make_server: Any, site: WebSite) -> None:
    _, alice = await start(make_server, url_preview_ip_range_whitelist=["127.0.0.1/32"], max_spider_size="64K")
    for path in ("/big", "/big-chunked"):
        status, body = await preview(alice, site.url(path))
        assert (status, body["errcode"]) == (502, "M_TOO_LARGE"), (path, body)
    status, body = await preview(alice, site.url("/page"))
    assert status == 200, body


async def test_upstream_errors(make_server: Any, site: WebSite) -> None:
    _, alice = await start(make_server, url_preview_ip_range_whitelist=["127.0.0.1/32"])
    status, body = await preview(alice, site.url("/missing"))
    assert (status, body["errcode"]) == (502, "M_UNKNOWN")
    status, body = await preview(alice, site.url("/text"))
    assert (status, body["errcode"]) == (502, "M_UNKNOWN")
    assert "content type" in body["error"]


async def test_a_server_that_does_not_answer_times_out(make_server: Any, site: WebSite,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safe_fetch, "FETCH_DEADLINE", 0.3)
    _, alice = await start(make_server, url_preview_ip_range_whitelist=["127.0.0.1/32"])
    status, body = await preview(alice, site.url("/slow-page"))
    assert (status, body["errcode"]) == (502, "M_UNKNOWN")
    assert "Timed out" in body["error"]


async def test_disabled_is_unrecognized(make_server: Any, site: WebSite) -> None:
    srv = await make_server("sqlite")
    alice = await user(srv, "alice")
    status, body = await preview(alice, site.url("/page"))
    assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")


async def test_bad_url_parameter(make_server: Any) -> None:
    _, alice = await start(make_server)
    status, body = await alice.request("GET", PREVIEW)
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
    for bad in ("ftp://example.org/", "file:///etc/passwd", "example.org", "javascript:alert(1)"):
        status, body = await preview(alice, bad)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), bad
    status, body = await alice.request("GET", PREVIEW, params={"url": "http://example.org/", "ts": "soon"})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


# -- oEmbed and the cache -----------------------------------------------------------------------------
async def test_oembed_discovered_in_the_page(make_server: Any, site: WebSite) -> None:
    _, alice = await start(make_server, url_preview_ip_range_whitelist=["127.0.0.1/32"])
    status, body = await preview(alice, site.url("/oembed-page"))
    assert status == 200, body
    assert body["og:title"] == "From oEmbed"
    assert body["og:description"] == "Embedded words"
    assert body["og:url"] == site.url("/oembed-page")


async def test_concurrent_requests_share_one_fetch_and_the_cache(make_server: Any, site: WebSite) -> None:
    _, alice = await start(make_server, url_preview_ip_range_whitelist=["127.0.0.1/32"])
    requests = [asyncio.create_task(preview(alice, site.url("/slow-page"))) for _ in range(5)]
    while site.hits.get("/slow-page", 0) == 0:
        await asyncio.sleep(0.01)
    site.slow_release.set()
    results = await asyncio.gather(*requests)
    assert all(status == 200 for status, _ in results), results
    assert len({body["og:image"] for _, body in results}) == 1
    status, again = await preview(alice, site.url("/slow-page"))
    assert (status, again) == (200, results[0][1])
    assert site.hits["/slow-page"] == 1
    assert site.hits["/image.png"] == 1


async def test_oembed_provider_from_additional_providers(make_server: Any, site: WebSite, tmp_path: Any) -> None:
    providers = tmp_path / "providers.json"
    providers.write_text(json.dumps([{"provider_name": "Test Tube", "endpoints": [
        {"schemes": ["http://127.0.0.1:*/watch/*"], "url": site.url("/provider/oembed")}]}]))
    _, alice = await start(make_server, url_preview_ip_range_whitelist=["127.0.0.1/32"],
                           oembed={"disable_default_providers": True, "additional_providers": [str(providers)]})
    watch = site.url("/watch/42")
    status, body = await preview(alice, watch)
    assert status == 200, body
    assert body["og:title"] == f"Video {watch}"
    assert body["og:site_name"] == "Test Tube"
    assert body["og:type"] == "video.other"
    assert body["og:url"] == watch
    assert body["og:image"].startswith("mxc://test.local/")
    assert "/watch/42" not in site.hits  # the provider was asked, not the page


async def test_an_image_url_is_previewed_as_the_stored_image(make_server: Any, site: WebSite) -> None:
    _, alice = await start(make_server, url_preview_ip_range_whitelist=["127.0.0.1/32"])
    status, body = await preview(alice, site.url("/image.png"))
    assert status == 200, body
    assert body["og:image"].startswith("mxc://test.local/")
    assert (body["og:image:type"], body["matrix:image:size"]) == ("image/png", len(PNG))
    assert (body["og:image:width"], body["og:image:height"]) == (64, 48)
    assert site.hits["/image.png"] == 1
