"""Remote media over federation, both directions: hs downloading a real Synapse's (and another hs's)
media through its authenticated client endpoint, Synapse (and hs) downloading hs's media through
hs's `/_matrix/federation/v1/media/download`, and, against a fake remote server whose answers the
test controls, what only a fake can show: one federation fetch for concurrent downloads, the cached
copy outliving the remote, the `Location` redirect (and one to a private address, refused), the
legacy fallback, the size cap, the rate limit, timeouts and errors; and hs's federation endpoints
as another server sees them (multipart/mixed, X-Matrix required, local unquarantined media only)."""

from __future__ import annotations

import asyncio
import io
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession, TCPConnector, web
from PIL import Image

from hs.federation.xmatrix import sign_request
from hs.media.multipart import MultipartReader, head, media_part_headers, parse_boundary, read_metadata, tail
from tests.federation.client import MatrixServer, unique, user
from tests.federation.conftest import MakeFedHs
from tests.federation.fake_remote import FakeRemote
from tests.federation.hs_server import FederatingHs
from tests.federation.tls import TestCA


# -- helpers ------------------------------------------------------------------------------------------
def png(width: int = 640, height: int = 480) -> bytes:
    image = Image.new("RGB", (width, height))
    for x in range(0, width, 16):
        for y in range(0, height, 16):
            image.putpixel((x, y), (x % 256, y % 256, (x * y) % 256))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def random_bytes(n: int) -> bytes:
    import os

    return os.urandom(n)


async def http(server: MatrixServer | FakeRemote, method: str, path: str, *, token: str | None = None,
               data: bytes | None = None, headers: dict[str, str] | None = None,
               params: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A raw request to a test server (bytes in, bytes out), trusting the test CA."""
    ca = server.cert.ca_path  # type: ignore[union-attr]
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    base = f"https://{server.server_name}"
    async with ClientSession(connector=TCPConnector(ssl=ssl.create_default_context(cafile=str(ca)))) as session:
        async with session.request(method, base + path, data=data, headers=h, params=params) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def upload(server: MatrixServer, token: str, data: bytes, content_type: str, filename: str) -> str:
    status, _, body = await http(server, "POST", "/_matrix/media/v3/upload", token=token, data=data,
                                 headers={"Content-Type": content_type}, params={"filename": filename})
    assert status == 200, (body, server.log_tail(20))
    uri = orjson.loads(body)["content_uri"]
    assert uri.startswith(f"mxc://{server.server_name}/")
    return str(uri).removeprefix("mxc://")


async def download(server: MatrixServer, token: str, server_and_id: str,
                   **params: str) -> tuple[int, dict[str, str], bytes]:
    return await http(server, "GET", f"/_matrix/client/v1/media/download/{server_and_id}", token=token,
                      params=params or None)


def error(body: bytes) -> str:
    return str(orjson.loads(body).get("errcode"))


@pytest.fixture(params=["synapse", "hs"])
async def media_remote(request: pytest.FixtureRequest, make_fed_hs: MakeFedHs) -> MatrixServer:
    """The other side: the session's Synapse, or a second hs."""
    if request.param == "synapse":
        server: MatrixServer = request.getfixturevalue("synapse")
        return server
    return await make_fed_hs()


# -- hs <-> Synapse / hs --------------------------------------------------------------------------------
async def test_hs_downloads_remote_media(make_fed_hs: MakeFedHs, media_remote: MatrixServer) -> None:
    """A file and an image uploaded on the remote come back through hs's authenticated download with
    the same bytes, type and file name; the second read is served from hs's cache."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(media_remote, unique("bob"))
    assert bob.token and alice.token
    data = random_bytes(300_000)
    file_id = await upload(media_remote, bob.token, data, "application/pdf", "report ☃.pdf")
    image = png()
    image_id = await upload(media_remote, bob.token, image, "image/png", "picture.png")

    status, headers, body = await download(local, alice.token, file_id)
    assert status == 200, (body[:200], local.log_tail(30))
    assert body == data and headers["Content-Type"] == "application/pdf"
    assert headers["Content-Disposition"] == "attachment; filename*=utf-8''report%20%E2%98%83.pdf"
    status, headers, body = await download(local, alice.token, image_id)
    assert status == 200 and body == image and headers["Content-Type"] == "image/png"
    assert headers["Content-Disposition"] == 'inline; filename="picture.png"'
    info = await local.hs.media.store.get_remote(media_remote.server_name, image_id.split("/")[1])
    assert info is not None and info.authenticated and info.media_length == len(image)
    # Unknown media there is 404 here.
    status, _, body = await download(local, alice.token, f"{media_remote.server_name}/{unique('nothing')}")
    assert status == 404 and error(body) == "M_NOT_FOUND"


async def test_remote_downloads_hs_media(make_fed_hs: MakeFedHs, media_remote: MatrixServer) -> None:
    """The remote's user reads hs media through the remote's authenticated download (the remote asks
    hs's federation endpoint: the legacy one would not serve this authenticated media), and a
    thumbnail of an hs image made by the remote from it."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(media_remote, unique("bob"))
    assert bob.token and alice.token
    data = random_bytes(200_000)
    file_id = await upload(local, alice.token, data, "text/plain", "notes.txt")
    image = png(800, 600)
    image_id = await upload(local, alice.token, image, "image/png", "big.png")

    status, headers, body = await download(media_remote, bob.token, file_id)
    assert status == 200, (body[:200], media_remote.log_tail(30), local.log_tail(30))
    assert body == data and headers["Content-Type"].startswith("text/plain")
    assert "notes.txt" in headers["Content-Disposition"]
    status, headers, body = await download(media_remote, bob.token, image_id)
    assert status == 200 and body == image and headers["Content-Type"] == "image/png"
    status, headers, body = await http(media_remote, "GET", f"/_matrix/client/v1/media/thumbnail/{image_id}",
                                       token=bob.token, params={"width": "32", "height": "32", "method": "crop"})
    assert status == 200, (body[:200], media_remote.log_tail(30))
    with Image.open(io.BytesIO(body)) as thumb:
        assert thumb.size == (32, 32)


async def test_hs_thumbnail_of_remote_image(make_fed_hs: MakeFedHs, media_remote: MatrixServer) -> None:
    """A thumbnail of the remote's image through hs: hs fetches the original and thumbnails it."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(media_remote, unique("bob"))
    assert bob.token and alice.token
    image_id = await upload(media_remote, bob.token, png(), "image/png", "picture.png")
    status, headers, body = await http(local, "GET", f"/_matrix/client/v1/media/thumbnail/{image_id}",
                                       token=alice.token, params={"width": "96", "height": "96", "method": "crop"})
    assert status == 200, (body[:200], local.log_tail(30))
    assert headers["Content-Type"].startswith("image/")
    with Image.open(io.BytesIO(body)) as thumb:
        assert thumb.size == (96, 96)


# -- against a fake remote ------------------------------------------------------------------------------
class MediaFake(FakeRemote):
    """A fake remote with media: `media[id] = (bytes, content type, file name)` served on the
    federation endpoint (multipart), unless `legacy_only` (then only on /_matrix/media/v3, as an older
    server); `redirect[id]` answers with a Location part instead; `/cdn/...` serves media plainly,
    `/hop/{id}` redirects there; `hold` (when set) parks federation media requests until it is set."""

    def __init__(self, ca: TestCA, directory: Path) -> None:
        super().__init__(ca, directory)
        self.media: dict[str, tuple[bytes, str, str | None]] = {}
        self.redirect: dict[str, str] = {}
        self.legacy_only = False
        self.hold: asyncio.Event | None = None
        self.authorizations: list[str | None] = []

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.authorizations.append(request.headers.get("Authorization"))
        fed = "/_matrix/federation/v1/media/download/"
        legacy = f"/_matrix/media/v3/download/{self.server_name}/"
        if path.startswith(fed) and not self.legacy_only:
            if self.hold is not None:
                await self.hold.wait()
            return await self._multipart(request, path.removeprefix(fed))
        if path.startswith(legacy) and self.legacy_only:
            assert request.query.get("allow_remote") == "false"
            return self._plain(path.removeprefix(legacy))
        if path.startswith("/cdn/"):
            return self._plain(path.removeprefix("/cdn/"))
        if path.startswith("/hop/"):
            raise web.HTTPFound(f"/cdn/{path.removeprefix('/hop/')}")
        return await super()._unknown(request)

    def _plain(self, media_id: str) -> web.Response:
        if media_id not in self.media:
            return self._error(404, "M_NOT_FOUND", "no such media")
        data, content_type, filename = self.media[media_id]
        return web.Response(body=data, headers=media_part_headers(content_type, filename))

    async def _multipart(self, request: web.Request, media_id: str) -> web.StreamResponse:
        boundary = "fake-boundary-0123456789"
        if media_id in self.redirect:
            body = head(boundary, {"Location": self.redirect[media_id]}) + tail(boundary)
        elif media_id in self.media:
            data, content_type, filename = self.media[media_id]
            body = head(boundary, media_part_headers(content_type, filename)) + data + tail(boundary)
        else:
            return self._error(404, "M_NOT_FOUND", "no such media")
        response = web.StreamResponse(headers={"Content-Type": f"multipart/mixed; boundary={boundary}"})
        await response.prepare(request)
        for i in range(0, len(body), 1000):  # small writes: delimiters split across reads
            await response.write(body[i:i + 1000])
        await response.write_eof()
        return response

    def count(self, prefix: str) -> int:
        return sum(1 for r in self.requests if r.split(" ", 1)[1].startswith(prefix))


@pytest.fixture
async def make_fake(federation_ca: TestCA, tmp_path: Path) -> AsyncIterator[Callable[[], Awaitable[MediaFake]]]:
    started: list[MediaFake] = []

    async def factory() -> MediaFake:
        fake = MediaFake(federation_ca, tmp_path)
        await fake.start()
        started.append(fake)
        return fake

    try:
        yield factory
    finally:
        for fake in started:
            await fake.stop()


FED_DOWNLOAD = "/_matrix/federation/v1/media/download/"


async def test_concurrent_downloads_fetch_once_and_the_cache_outlives_the_remote(
        make_fed_hs: MakeFedHs, make_fake: Callable[[], Awaitable[MediaFake]]) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    assert alice.token
    fake = await make_fake()
    data = random_bytes(500_000)
    fake.media["abc"] = (data, "video/mp4", "clip.mp4")
    fake.hold = asyncio.Event()
    downloads = [asyncio.create_task(download(local, alice.token, f"{fake.server_name}/abc")) for _ in range(8)]
    while fake.count(FED_DOWNLOAD) == 0:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # (late requests find the cache instead: one fetch either way)
    fake.hold.set()
    results = await asyncio.gather(*downloads)
    for status, headers, body in results:
        assert status == 200 and body == data and headers["Content-Type"] == "video/mp4"
        assert headers["Content-Disposition"] == 'inline; filename="clip.mp4"'
    assert fake.count(FED_DOWNLOAD) == 1, fake.requests
    assert fake.authorizations[0] is not None and fake.authorizations[0].startswith("X-Matrix ")
    await fake.stop()
    status, _, body = await download(local, alice.token, f"{fake.server_name}/abc")
    assert status == 200 and body == data
    # Not served onwards: hs's federation endpoint has only hs's own media.
    other = await make_fake()
    status, _, _ = await fed_get(other, local, FED_DOWNLOAD + "abc")
    assert status == 404


async def test_redirect_part_is_followed(make_fed_hs: MakeFedHs, make_fake: Callable[[], Awaitable[MediaFake]],
                                         caplog: pytest.LogCaptureFixture) -> None:
    """A Location part is fetched with a plain GET (one more redirect hop followed), and a Location
    naming a private address is refused without connecting."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    assert alice.token
    fake = await make_fake()
    data = png(100, 50)
    fake.media["elsewhere"] = (data, "image/png", "moved.png")
    fake.redirect["moved"] = f"https://{fake.server_name}/hop/elsewhere"
    status, headers, body = await download(local, alice.token, f"{fake.server_name}/moved")
    assert status == 200, (body[:200], local.log_tail(20))
    assert body == data and headers["Content-Type"] == "image/png"
    assert headers["Content-Disposition"] == 'inline; filename="moved.png"'
    assert fake.count("/hop/elsewhere") == 1 and fake.count("/cdn/elsewhere") == 1
    assert fake.authorizations[-1] is None  # the redirect target gets no X-Matrix header
    fake.redirect["private"] = "http://169.254.169.254/latest/meta-data"
    status, _, body = await download(local, alice.token, f"{fake.server_name}/private")
    assert status == 502, body
    assert "resolves to forbidden address(es) 169.254.169.254" in caplog.text


async def test_legacy_fallback(make_fed_hs: MakeFedHs, make_fake: Callable[[], Awaitable[MediaFake]]) -> None:
    """A server without the federation endpoint (404 M_UNRECOGNIZED) is asked on the legacy
    unauthenticated path; its media is cached as unauthenticated, so the legacy endpoints serve it."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    assert alice.token
    fake = await make_fake()
    fake.legacy_only = True
    data = random_bytes(10_000)
    fake.media["old"] = (data, "application/octet-stream", None)
    status, headers, body = await download(local, alice.token, f"{fake.server_name}/old")
    assert status == 200 and body == data, (body[:200], local.log_tail(20))
    assert fake.count(FED_DOWNLOAD) == 1
    assert fake.count(f"/_matrix/media/v3/download/{fake.server_name}/old") == 1
    assert fake.authorizations[-1] is None
    info = await local.hs.media.store.get_remote(fake.server_name, "old")
    assert info is not None and not info.authenticated
    status, _, body = await http(local, "GET", f"/_matrix/media/v3/download/{fake.server_name}/old")
    assert status == 200 and body == data
    # With authenticated media on, the legacy endpoints fetch nothing new.
    fake.media["new"] = (data, "application/octet-stream", None)
    status, _, _ = await http(local, "GET", f"/_matrix/media/v3/download/{fake.server_name}/new")
    assert status == 404 and fake.count(f"/_matrix/media/v3/download/{fake.server_name}/new") == 0


async def test_errors_size_cap_and_blocked_servers(make_fed_hs: MakeFedHs,
                                                   make_fake: Callable[[], Awaitable[MediaFake]]) -> None:
    fake = await make_fake()
    blocked = await make_fake()
    local = await make_fed_hs(max_upload_size=100_000, prevent_media_downloads_from=[blocked.server_name])
    alice = await user(local, unique("alice"))
    assert alice.token
    fake.media["big"] = (random_bytes(100_001), "application/octet-stream", None)
    fake.media["fits"] = (random_bytes(100_000), "application/octet-stream", None)
    status, _, body = await download(local, alice.token, f"{fake.server_name}/big")
    assert status == 502 and error(body) == "M_TOO_LARGE"
    assert await local.hs.media.store.get_remote(fake.server_name, "big") is None
    tmp = local.hs.media.files.local.tmp_dir
    assert not tmp.exists() or not list(tmp.iterdir())  # the partial file is gone
    status, _, body = await download(local, alice.token, f"{fake.server_name}/fits")
    assert status == 200 and body == fake.media["fits"][0]
    local.hs.config.prevent_media_downloads_from.append(fake.server_name)
    status, _, _ = await download(local, alice.token, f"{fake.server_name}/fits")
    assert status == 404  # not even the cached copy
    local.hs.config.prevent_media_downloads_from.remove(fake.server_name)
    status, _, body = await download(local, alice.token, f"{fake.server_name}/missing")
    assert status == 404 and error(body) == "M_NOT_FOUND"
    blocked.media["x"] = (b"x", "text/plain", None)
    status, _, _ = await download(local, alice.token, f"{blocked.server_name}/x")
    assert status == 404 and blocked.count(FED_DOWNLOAD) == 0
    await fake.stop()
    status, _, body = await download(local, alice.token, f"{fake.server_name}/gone")
    assert status == 502, body


async def test_fetched_bytes_quarantined_here_stay_blocked(make_fed_hs: MakeFedHs,
                                                          make_fake: Callable[[], Awaitable[MediaFake]]) -> None:
    """Remote media whose bytes are quarantined here under another ID is quarantined once fetched."""
    local = await make_fed_hs()
    _, admin_token = await local.register_user(unique("admin"), admin=True)
    data = random_bytes(5_000)
    server_and_id = await upload(local, admin_token, data, "application/octet-stream", "bad.bin")
    status, _, body = await http(local, "POST", f"/_synapse/admin/v1/media/quarantine/{server_and_id}",
                                 token=admin_token, data=b"{}")
    assert status == 200, body
    fake = await make_fake()
    fake.media["same"] = (data, "application/octet-stream", None)
    fake.media["other"] = (random_bytes(5_000), "application/octet-stream", None)
    status, _, _ = await download(local, admin_token, f"{fake.server_name}/same")
    assert status == 404 and fake.count(FED_DOWNLOAD) == 1
    status, _, _ = await download(local, admin_token, f"{fake.server_name}/other")
    assert status == 200


async def test_rate_limit_and_timeout(make_fed_hs: MakeFedHs, make_fake: Callable[[], Awaitable[MediaFake]]
                                      ) -> None:
    """Bytes fetched count per client address (Synapse's rules): a download starts only with room in
    the bucket (here the whole bucket, as it is under 1 MiB), a multipart body is counted as it
    arrives, and an announced length that does not fit is refused before the body is read; cached
    media costs nothing. A remote that does not start answering within timeout_ms gives 504."""
    fake = await make_fake()
    local = await make_fed_hs(remote_media_download_burst_count=100_000, remote_media_download_per_second=1)
    alice = await user(local, unique("alice"))
    assert alice.token
    for name in ("one", "two"):
        fake.media[name] = (random_bytes(60_000), "application/octet-stream", None)
    status, _, _ = await download(local, alice.token, f"{fake.server_name}/one")
    assert status == 200
    status, _, body = await download(local, alice.token, f"{fake.server_name}/two")
    assert status == 429 and error(body) == "M_LIMIT_EXCEEDED"
    assert fake.count(FED_DOWNLOAD) == 1  # refused before asking
    status, _, _ = await download(local, alice.token, f"{fake.server_name}/one")  # cached: not counted
    assert status == 200

    legacy = await make_fake()
    legacy.legacy_only = True
    legacy.media["huge"] = (random_bytes(150_000), "application/octet-stream", None)
    legacy.media["fits"] = (random_bytes(90_000), "application/octet-stream", None)
    other = await make_fed_hs(remote_media_download_burst_count=100_000, remote_media_download_per_second=1)
    bob = await user(other, unique("bob"))
    assert bob.token
    status, _, body = await download(other, bob.token, f"{legacy.server_name}/huge")
    assert status == 429 and error(body) == "M_LIMIT_EXCEEDED"
    status, _, body = await download(other, bob.token, f"{legacy.server_name}/fits")
    assert status == 200 and body == legacy.media["fits"][0]

    third = await make_fed_hs()
    carol = await user(third, unique("carol"))
    assert carol.token
    fake.hold = asyncio.Event()
    status, _, body = await download(third, carol.token, f"{fake.server_name}/two", timeout_ms="1000")
    assert status == 504 and error(body) == "M_NOT_YET_UPLOADED"
    fake.hold.set()


# -- hs's federation endpoints as another server sees them --------------------------------------------
async def fed_get(fake: FakeRemote, local: FederatingHs, path: str, *, signed: bool = True,
                  params: str = "") -> tuple[int, dict[str, str], bytes]:
    uri = path + (f"?{params}" if params else "")
    headers = {"Authorization": sign_request(fake.server_name, local.server_name, fake.key, "GET", uri, None)
               } if signed else {}
    from yarl import URL

    async with ClientSession(connector=TCPConnector(
            ssl=ssl.create_default_context(cafile=str(local.cert.ca_path)))) as session:
        async with session.get(URL(f"https://{local.server_name}{uri}", encoded=True), headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def parse_multipart(headers: dict[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
    async def one() -> AsyncIterator[bytes]:
        yield body

    reader = MultipartReader(one(), parse_boundary(headers["Content-Type"]))
    metadata, part = await read_metadata(reader)
    assert metadata == {}
    data = b"".join([c async for c in reader.body()])
    assert await reader.next_part() is None
    return part, data


async def test_federation_endpoint_serves_local_media(make_fed_hs: MakeFedHs,
                                                      make_fake: Callable[[], Awaitable[MediaFake]]) -> None:
    local = await make_fed_hs()
    admin_id, admin_token = await local.register_user(unique("admin"), admin=True)
    fake = await make_fake()
    data = random_bytes(123_456)
    server_and_id = await upload(local, admin_token, data, "application/zip", "archive.zip")
    media_id = server_and_id.split("/")[1]
    status, headers, body = await fed_get(fake, local, FED_DOWNLOAD + media_id)
    assert status == 200, body[:200]
    assert headers["Content-Type"].startswith("multipart/mixed; boundary=")
    assert int(headers["Content-Length"]) == len(body)
    part, got = await parse_multipart(headers, body)
    assert got == data and part["content-type"] == "application/zip"
    assert part["content-disposition"] == 'attachment; filename="archive.zip"'

    status, _, body = await fed_get(fake, local, FED_DOWNLOAD + media_id, signed=False)
    assert status == 401 and error(body) == "M_UNAUTHORIZED"
    status, _, body = await fed_get(fake, local, FED_DOWNLOAD + "unknown")
    assert status == 404 and error(body) == "M_NOT_FOUND"
    status, _, body = await fed_get(fake, local, "/_matrix/federation/v1/media/thumbnail/" + media_id,
                                    params="width=0&height=10")
    assert status == 400, body

    status, _, body = await http(local, "POST", f"/_synapse/admin/v1/media/quarantine/{server_and_id}",
                                 token=admin_token, data=b"{}")
    assert status == 200, body
    status, _, body = await fed_get(fake, local, FED_DOWNLOAD + media_id)
    assert status == 404 and error(body) == "M_NOT_FOUND"


async def test_federation_thumbnail_endpoint(make_fed_hs: MakeFedHs,
                                             make_fake: Callable[[], Awaitable[MediaFake]]) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    assert alice.token
    fake = await make_fake()
    media_id = (await upload(local, alice.token, png(800, 600), "image/png", "pic.png")).split("/")[1]
    status, headers, body = await fed_get(fake, local, "/_matrix/federation/v1/media/thumbnail/" + media_id,
                                          params="width=32&height=32&method=crop")
    assert status == 200, body[:200]
    part, got = await parse_multipart(headers, body)
    assert part["content-type"].startswith("image/")
    with Image.open(io.BytesIO(got)) as thumb:
        assert thumb.size == (32, 32)
