"""The S3 media store against a real S3 API (moto's server mode, in its own process): the backend on
its own (small and multipart uploads, ranged streaming reads, missing keys, config errors, memory
bounds), then `MediaFiles` with an S3 provider (synchronous and background copies, reads falling back
to the bucket once the local file is gone)."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from hs.config import MediaStorageProvider
from hs.media.s3 import PART_SIZE, S3Storage, part_size_for
from hs.media.storage import LocalStorage, MediaFiles, content_key
from tests.s3_server import MotoServer, moto_server  # noqa: F401  (the session fixture)

MiB = 1024 * 1024


@pytest.fixture
async def bucket(moto_server: MotoServer) -> str:  # noqa: F811
    return await moto_server.create_bucket()


@pytest.fixture
async def s3(moto_server: MotoServer, bucket: str) -> AsyncIterator[S3Storage]:  # noqa: F811
    storage = S3Storage.from_provider_config(moto_server.provider_config(bucket))
    yield storage
    await storage.close()


async def read_all(storage: S3Storage, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in storage.read(key, start, end)])


def write_random(path: Path, size: int) -> str:
    """Write `size` random bytes to `path` 1 MiB at a time; their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(MiB, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


async def sha256_of(storage: S3Storage, key: str) -> tuple[str, int]:
    digest, total = hashlib.sha256(), 0
    async for chunk in storage.read(key):
        digest.update(chunk)
        total += len(chunk)
    return digest.hexdigest(), total


# The backend on its own


async def test_put_size_read_and_ranges(s3: S3Storage, tmp_path: Path) -> None:
    data = os.urandom(300_000)  # more than one 256 KiB read chunk
    source = tmp_path / "f"
    source.write_bytes(data)
    await s3.put("content/ab/cd/abcd", source)
    assert source.read_bytes() == data  # the source is left in place
    assert await s3.size("content/ab/cd/abcd") == len(data)
    assert await read_all(s3, "content/ab/cd/abcd") == data
    assert await read_all(s3, "content/ab/cd/abcd", 0, 10) == data[:10]
    assert await read_all(s3, "content/ab/cd/abcd", 1000) == data[1000:]
    assert await read_all(s3, "content/ab/cd/abcd", 262_000, 263_000) == data[262_000:263_000]
    assert await read_all(s3, "content/ab/cd/abcd", len(data) - 1, len(data)) == data[-1:]
    # As a local read: an end past the file stops at its end, an empty or past-the-end range is empty.
    assert await read_all(s3, "content/ab/cd/abcd", 299_990, 400_000) == data[299_990:]
    assert await read_all(s3, "content/ab/cd/abcd", 50, 50) == b""
    assert await read_all(s3, "content/ab/cd/abcd", len(data) + 5) == b""


async def test_empty_file(s3: S3Storage, tmp_path: Path) -> None:
    source = tmp_path / "empty"
    source.write_bytes(b"")
    await s3.put("content/00/00/empty", source)
    assert await s3.size("content/00/00/empty") == 0
    assert await read_all(s3, "content/00/00/empty") == b""


async def test_missing_keys(s3: S3Storage) -> None:
    assert await s3.size("content/no/ne/none") is None
    with pytest.raises(FileNotFoundError):
        await read_all(s3, "content/no/ne/none")
    await s3.delete("content/no/ne/none")  # no error


async def test_delete(s3: S3Storage, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"bytes to delete")
    await s3.put("thumbnails/ab/cd/abcd/32-32-crop.png", source)
    assert await s3.size("thumbnails/ab/cd/abcd/32-32-crop.png") == 15
    await s3.delete("thumbnails/ab/cd/abcd/32-32-crop.png")
    assert await s3.size("thumbnails/ab/cd/abcd/32-32-crop.png") is None


async def test_multipart_upload_reads_back_identical(s3: S3Storage, tmp_path: Path) -> None:
    source = tmp_path / "big"
    digest = write_random(source, 20 * MiB)
    await s3.put("content/bi/gg/big", source)
    assert await s3.size("content/bi/gg/big") == 20 * MiB
    assert await sha256_of(s3, "content/bi/gg/big") == (digest, 20 * MiB)
    # A multipart object's ETag ends in "-<parts>": three 8 MiB parts (8 + 8 + 4).
    client = await s3._get_client()
    head = await client.head_object(Bucket=s3.bucket, Key="content/bi/gg/big")
    assert head["ETag"].strip('"').endswith("-3")
    # A range across the first part boundary.
    with open(source, "rb") as f:
        f.seek(PART_SIZE - 100)
        expected = f.read(200)
    assert await read_all(s3, "content/bi/gg/big", PART_SIZE - 100, PART_SIZE + 100) == expected


async def test_failed_multipart_upload_is_aborted(s3: S3Storage, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "big"
    write_random(source, 17 * MiB)
    client = await s3._get_client()
    real_upload_part = client.upload_part

    async def failing_upload_part(**kwargs: Any) -> Any:
        if kwargs["PartNumber"] == 2:
            raise OSError("network gone")
        return await real_upload_part(**kwargs)

    monkeypatch.setattr(client, "upload_part", failing_upload_part)
    with pytest.raises(OSError, match="network gone"):
        await s3.put("content/fa/il/fail", source)
    uploads = await client.list_multipart_uploads(Bucket=s3.bucket)
    assert not uploads.get("Uploads")
    assert await s3.size("content/fa/il/fail") is None


async def test_put_skips_an_object_already_there(s3: S3Storage, tmp_path: Path) -> None:
    """Keys name their bytes: a second put of a key the bucket has (at that size) is only a HEAD."""
    source = tmp_path / "f"
    source.write_bytes(b"same bytes")
    await s3.put("content/sa/me/same", source)
    client = await s3._get_client()
    sent: list[str] = []
    client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.method))
    await s3.put("content/sa/me/same", source)
    assert sent == ["HEAD"]
    source.write_bytes(b"a different length")  # not the size stored: uploaded again
    await s3.put("content/sa/me/same", source)
    assert sent == ["HEAD", "HEAD", "PUT"]


async def test_prefix_and_storage_class(moto_server: MotoServer, bucket: str, tmp_path: Path) -> None:  # noqa: F811
    storage = S3Storage.from_provider_config(
        moto_server.provider_config(bucket, prefix="hs1/", storage_class="STANDARD_IA"))
    try:
        source = tmp_path / "f"
        source.write_bytes(b"prefixed")
        await storage.put("content/pr/ef/prefixed", source)
        assert await moto_server.keys(bucket) == ["hs1/content/pr/ef/prefixed"]
        client = await storage._get_client()
        head = await client.head_object(Bucket=bucket, Key="hs1/content/pr/ef/prefixed")
        assert head["StorageClass"] == "STANDARD_IA"
        assert await read_all(storage, "content/pr/ef/prefixed") == b"prefixed"
    finally:
        await storage.close()


async def test_sse_c_key_goes_with_every_request(moto_server: MotoServer, bucket: str,  # noqa: F811
                                                 tmp_path: Path) -> None:
    """SSE-C: botocore validates each operation's parameters, so a key passed where S3 takes none (or
    missing where it needs one) would fail here; moto accepts the key without enforcing it."""
    sent: list[tuple[str, bytes | None]] = []
    storage = S3Storage.from_provider_config(moto_server.provider_config(bucket, sse_customer_key="k" * 32))
    try:
        client = await storage._get_client()
        client.meta.events.register(
            "before-send.s3", lambda request, **_: sent.append(
                (request.method, request.headers.get("x-amz-server-side-encryption-customer-algorithm"))))
        source = tmp_path / "big"
        digest = write_random(source, PART_SIZE + MiB)
        await storage.put("content/ss/ec/ssec", source)
        assert await storage.size("content/ss/ec/ssec") == PART_SIZE + MiB
        assert await sha256_of(storage, "content/ss/ec/ssec") == (digest, PART_SIZE + MiB)
        # The existence check, multipart creation, both parts, the size and the read carry the key;
        # the completion takes none.
        assert [(method, algo and algo.decode()) for method, algo in sent] == [
            ("HEAD", "AES256"), ("POST", "AES256"), ("PUT", "AES256"), ("PUT", "AES256"), ("POST", None),
            ("HEAD", "AES256"), ("GET", "AES256")]
    finally:
        await storage.close()


async def test_errors_other_than_missing_propagate(moto_server: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    storage = S3Storage.from_provider_config(moto_server.provider_config("no-such-bucket-here"))
    try:
        source = tmp_path / "f"
        source.write_bytes(b"x")
        with pytest.raises(ClientError) as caught:
            await storage.put("content/xx/xx/x", source)
        assert caught.value.response["Error"]["Code"] in ("NoSuchBucket", "404")
        with pytest.raises(ClientError, match="NoSuchBucket"):
            await read_all(storage, "content/xx/xx/x")
    finally:
        await storage.close()


@pytest.mark.parametrize(("config", "named"), [
    ({}, "'bucket'"),
    ({"bucket": ""}, "'bucket'"),
    ({"bucket": "b", "acess_key_id": "typo"}, "'acess_key_id'"),
    ({"bucket": "b", "storage_class": "GLACIER"}, "'storage_class'"),
    ({"bucket": "b", "threadpool_size": 0}, "'threadpool_size'"),
    ({"bucket": "b", "max_concurrency": True}, "'max_concurrency'"),
    ({"bucket": 5}, "'bucket'"),
    ({"bucket": "b", "sse_customer_algo": "AES256"}, "'sse_customer_algo'"),
    ({"bucket": "b", "request_checksum_calculation": "always"}, "'request_checksum_calculation'"),
])
def test_bad_config_names_the_key(config: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError) as caught:
        S3Storage.from_provider_config(config)
    assert named in str(caught.value)
    assert "media_storage_providers[].config" in str(caught.value)


def test_synapse_config_is_accepted() -> None:
    """A block written for Synapse's s3_storage_provider module, every key it knows, carries over."""
    storage = S3Storage.from_provider_config({
        "bucket": "media", "region_name": "eu-west-1", "endpoint_url": "https://s3.example.com",
        "access_key_id": "AKIA", "secret_access_key": "secret", "session_token": "token",
        "prefix": "synapse/", "storage_class": "INTELLIGENT_TIERING", "sse_customer_key": "k" * 32,
        "sse_customer_algo": "AES256", "threadpool_size": 20,
        "request_checksum_calculation": "when_supported", "response_checksum_validation": "when_required"})
    assert storage.bucket == "media" and storage.object_key("content/a") == "synapse/content/a"


def test_part_size_stays_within_the_part_limit() -> None:
    assert part_size_for(20 * MiB) == PART_SIZE
    assert part_size_for(PART_SIZE * 10_000) == PART_SIZE
    big = 200 * 1024 * MiB  # 200 GiB
    assert part_size_for(big) * 10_000 >= big and part_size_for(big) % MiB == 0


async def test_put_and_read_of_50_mib_stay_well_under_its_size(s3: S3Storage, tmp_path: Path) -> None:
    """Streaming both ways: the Python heap's peak during the upload, and during the read, is a
    fraction of the file (the multipart parts in flight, the read chunks), not the file."""
    size = 50 * MiB
    source = tmp_path / "huge"
    digest = write_random(source, size)
    await s3._get_client()  # the client's own setup (service models) is not the transfer's cost
    tracemalloc.start()
    try:
        await s3.put("content/hu/ge/huge", source)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert await sha256_of(s3, "content/hu/ge/huge") == (digest, size)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Two 8 MiB parts in flight (max_concurrency 2, measured ~18.5 MiB); reads in chunks (~1.2 MiB).
    assert put_peak < 24 * MiB, put_peak
    assert read_peak < 4 * MiB, read_peak


# MediaFiles with an S3 provider


def provider(moto_server: MotoServer, bucket: str, **entry: Any) -> MediaStorageProvider:  # noqa: F811
    return MediaStorageProvider(module="s3_storage_provider.S3StorageProviderBackend",
                                config=moto_server.provider_config(bucket), **entry)


def media_files(tmp_path: Path, *entries: MediaStorageProvider) -> MediaFiles:
    return MediaFiles(LocalStorage(tmp_path / "media_store"),
                      [(e, S3Storage.from_provider_config(e.config)) for e in entries])


def local_temp(files: MediaFiles, data: bytes) -> Path:
    temp = files.local.new_temp_path()
    temp.write_bytes(data)
    return temp


async def test_adopt_copies_to_s3_and_reads_fall_back(moto_server: MotoServer, bucket: str,  # noqa: F811
                                                      tmp_path: Path) -> None:
    files = media_files(tmp_path, provider(moto_server, bucket, store_synchronous=True))
    s3 = files.providers[0][1]
    try:
        data = os.urandom(100_000)
        key = content_key(hashlib.sha256(data).hexdigest())
        await files.adopt(key, local_temp(files, data))
        assert await s3.size(key) == len(data)  # there before adopt returned
        found = await files.locate(key)
        assert found is not None and found[0] is files.local

        files.local.path(key).unlink()
        found = await files.locate(key)
        assert found == (s3, len(data))
        assert b"".join([c async for c in found[0].read(key, 10, 20)]) == data[10:20]

        path = await files.ensure_local(key)
        assert path == files.local.path(key) and path.read_bytes() == data
        assert not list(files.local.tmp_dir.iterdir())  # no temporary file left behind
        found = await files.locate(key)
        assert found is not None and found[0] is files.local

        await files.delete(key)
        assert await files.locate(key) is None
        assert await files.ensure_local(key) is None
    finally:
        await files.close()


async def test_background_copy_finishes_by_close(moto_server: MotoServer, bucket: str,  # noqa: F811
                                                 tmp_path: Path) -> None:
    files = media_files(tmp_path, provider(moto_server, bucket, store_synchronous=False))
    data = os.urandom(9 * MiB)  # multipart, so the copy takes a few requests
    key = content_key(hashlib.sha256(data).hexdigest())
    await files.adopt(key, local_temp(files, data))
    await files.close()
    check = S3Storage.from_provider_config(moto_server.provider_config(bucket))
    try:
        assert await check.size(key) == len(data)
        assert await sha256_of(check, key) == (hashlib.sha256(data).hexdigest(), len(data))
    finally:
        await check.close()


async def test_store_local_and_store_remote_choose_what_is_copied(moto_server: MotoServer,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    local_only = await moto_server.create_bucket()
    remote_only = await moto_server.create_bucket()
    files = media_files(tmp_path,
                        provider(moto_server, local_only, store_local=True, store_remote=False),
                        provider(moto_server, remote_only, store_local=False, store_remote=True))
    try:
        ours, theirs = b"uploaded here", b"fetched from another server"
        ours_key = content_key(hashlib.sha256(ours).hexdigest())
        theirs_key = content_key(hashlib.sha256(theirs).hexdigest())
        await files.adopt(ours_key, local_temp(files, ours))
        await files.adopt(theirs_key, local_temp(files, theirs), remote=True)
        (_, to_local_bucket), (_, to_remote_bucket) = files.providers
        assert await to_local_bucket.size(ours_key) == len(ours)
        assert await to_local_bucket.size(theirs_key) is None
        assert await to_remote_bucket.size(theirs_key) == len(theirs)
        assert await to_remote_bucket.size(ours_key) is None
    finally:
        await files.close()


# Through a real server: uploads over HTTP land in the bucket, downloads come from it


async def _s3_server(make_server: Any, moto_server: MotoServer, bucket: str, **entry: Any) -> Any:  # noqa: F811
    provider_entry = {"module": "s3_storage_provider.S3StorageProviderBackend", "store_local": True,
                      "store_synchronous": True, "config": moto_server.provider_config(bucket), **entry}
    return await make_server("sqlite", media_storage_providers=[provider_entry])


async def _http(srv: Any, method: str, path: str, token: str, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.request(
            method, srv.base_url + path, data=data,
            headers={"Authorization": f"Bearer {token}", **(headers or {})}) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def _wipe_local_store(srv: Any) -> int:
    """Delete every file of the server's media_store_path; how many there were."""
    root = srv.hs.config.resolve_path(srv.hs.config.media_store_path)
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        path.unlink()
    return len(files)


async def test_upload_lands_in_s3_and_downloads_after_the_local_store_is_wiped(
        make_server: Any, moto_server: MotoServer, bucket: str) -> None:  # noqa: F811
    import orjson

    srv = await _s3_server(make_server, moto_server, bucket)
    alice = srv.client()
    await alice.register("alice")
    data = os.urandom(3 * MiB + 12345)
    status, _, body = await _http(srv, "POST", "/_matrix/media/v3/upload?filename=blob.bin", alice.token, data,
                                  {"Content-Type": "application/octet-stream"})
    assert status == 200, body
    media_path = orjson.loads(body)["content_uri"].removeprefix("mxc://")

    # store_synchronous: the bucket has the file once the upload is answered.
    check = S3Storage.from_provider_config(moto_server.provider_config(bucket))
    try:
        key = content_key(hashlib.sha256(data).hexdigest())
        assert await check.size(key) == len(data)
    finally:
        await check.close()

    assert _wipe_local_store(srv) >= 1
    url = f"/_matrix/client/v1/media/download/{media_path}"
    status, headers, body = await _http(srv, "GET", url, alice.token)
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert headers["Content-Length"] == str(len(data))
    status, headers, body = await _http(srv, "GET", url, alice.token, headers={"Range": "bytes=1000000-1999999"})
    assert status == 206 and body == data[1_000_000:2_000_000]
    assert headers["Content-Range"] == f"bytes 1000000-1999999/{len(data)}"
    status, _, body = await _http(srv, "GET", url, alice.token, headers={"Range": "bytes=-100"})
    assert status == 206 and body == data[-100:]


async def test_multipart_upload_through_the_server(make_server: Any, moto_server: MotoServer,  # noqa: F811
                                                   bucket: str) -> None:
    import orjson

    srv = await _s3_server(make_server, moto_server, bucket, store_synchronous=False)
    alice = srv.client()
    await alice.register("alice")
    data = os.urandom(PART_SIZE + 5 * MiB)
    status, _, body = await _http(srv, "POST", "/_matrix/media/v3/upload", alice.token, data,
                                  {"Content-Type": "application/octet-stream"})
    assert status == 200, body
    media_path = orjson.loads(body)["content_uri"].removeprefix("mxc://")
    await srv.hs.media_files.close()  # waits for the background copy (and closes the S3 client)
    _wipe_local_store(srv)
    status, _, body = await _http(srv, "GET", f"/_matrix/client/v1/media/download/{media_path}", alice.token)
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


async def test_thumbnails_come_from_s3_after_the_local_store_is_wiped(
        make_server: Any, moto_server: MotoServer, bucket: str) -> None:  # noqa: F811
    """Thumbnails made at upload are copied to the bucket too; with media_store_path wiped they are
    served from it, and a dynamic thumbnail is made from the source fetched back from it."""
    import io

    import orjson
    from PIL import Image

    provider_entry = {"module": "s3_storage_provider.S3StorageProviderBackend", "store_local": True,
                      "store_synchronous": True, "config": moto_server.provider_config(bucket)}
    srv = await make_server("sqlite", media_storage_providers=[provider_entry], dynamic_thumbnails=True)
    alice = srv.client()
    await alice.register("alice")
    image = Image.new("RGB", (1200, 900), (30, 120, 200))
    image.paste((250, 200, 0), (300, 225, 600, 450))
    jpeg = io.BytesIO()
    image.save(jpeg, "JPEG", quality=85)
    status, _, body = await _http(srv, "POST", "/_matrix/media/v3/upload", alice.token, jpeg.getvalue(),
                                  {"Content-Type": "image/jpeg"})
    assert status == 200, body
    media_path = orjson.loads(body)["content_uri"].removeprefix("mxc://")

    async def thumbnail(width: int, height: int, method: str) -> tuple[str, tuple[int, int]]:
        url = f"/_matrix/client/v1/media/thumbnail/{media_path}?width={width}&height={height}&method={method}"
        status, headers, body = await _http(srv, "GET", url, alice.token)
        assert status == 200, body
        return headers["Content-Type"], Image.open(io.BytesIO(body)).size

    keys = await moto_server.keys(bucket)
    assert sum(k.startswith("content/") for k in keys) == 1
    assert sum(k.startswith("thumbnails/") for k in keys) == 5  # the configured sizes, made at upload

    assert _wipe_local_store(srv) == 6
    assert await thumbnail(96, 96, "crop") == ("image/jpeg", (96, 96))
    assert await thumbnail(320, 240, "scale") == ("image/jpeg", (320, 240))
    # Dynamic: made now, from the source the store fetches back from the bucket.
    assert await thumbnail(100, 100, "scale") == ("image/jpeg", (100, 75))
