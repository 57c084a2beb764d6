"""Media files in S3-compatible object storage (AWS S3, MinIO, Ceph RGW, moto...), through aiobotocore.

A `media_storage_providers` entry selects it; its `config` takes the keys of Synapse's
synapse-s3-storage-provider module, so an admin's block carries over unchanged:

    media_storage_providers:
      - module: s3_storage_provider.S3StorageProviderBackend   # or hs.media.s3.S3Storage
        store_local: true          # copy local uploads to the bucket
        store_remote: false        # copy cached remote media too
        store_synchronous: true    # answer an upload only once the bucket has it
        config:
          bucket: my-media                       # required
          region_name: eu-west-1                 # optional
          endpoint_url: https://s3.example.com   # optional: non-AWS services (MinIO...)
          access_key_id: ...                     # optional: else boto's usual credential chain
          secret_access_key: ...                 #   (environment, ~/.aws, instance role)
          session_token: ...                     # optional
          prefix: "hs1/"                         # optional: prepended to every key as is ("" default)
          storage_class: STANDARD                # STANDARD (default), REDUCED_REDUNDANCY,
                                                 #   STANDARD_IA, INTELLIGENT_TIERING
          sse_customer_key: ...                  # optional: SSE-C key, sent with every request
          sse_customer_algo: AES256              # optional (AES256 default)
          threadpool_size: 40                    # optional: most connections open to S3 at once
          max_concurrency: 2                     # optional (hs only): parts of one large upload sent
                                                 #   at once; each holds 8 MiB in memory
          request_checksum_calculation: when_required   # optional, botocore's setting (as Synapse)
          response_checksum_validation: when_required   # optional, botocore's setting (as Synapse)

Keys in the bucket are hs's store keys (`content/ab/cd/<sha256>`, `thumbnails/...`) after the prefix;
they are not Synapse's `local_content/...` layout, so a bucket written by Synapse is not read as is.

Memory stays bounded whatever the file size: files under 8 MiB go up in one PutObject (read whole,
which is fine at that size); larger ones by multipart upload, one 8 MiB part per slot of
`max_concurrency` in memory at a time (parts grow past 8 MiB only beyond S3's 10 000-part limit, at
80 GB). Downloads stream the response body chunk by chunk. A missing object is reported as None by
`size` (a 404 needs the s3:ListBucket permission: without it S3 answers 403, which is an error); every
other failure propagates to the caller, which logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hs.media.storage import CHUNK_SIZE, StorageBackend

logger = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024
"""Files of at least this size go up by multipart upload, in parts of this size."""
MAX_PARTS = 10_000
"""S3's limit on the parts of one multipart upload."""

STORAGE_CLASSES = ("STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "INTELLIGENT_TIERING")
CHECKSUM_SETTINGS = ("when_required", "when_supported")
_STRING_KEYS = ("bucket", "region_name", "endpoint_url", "access_key_id", "secret_access_key",
                "session_token", "prefix", "storage_class", "sse_customer_key", "sse_customer_algo",
                "request_checksum_calculation", "response_checksum_validation")
_INT_KEYS = ("threadpool_size", "max_concurrency")
KNOWN_KEYS = frozenset(_STRING_KEYS + _INT_KEYS)
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_WHERE = "media_storage_providers[].config"


def part_size_for(total: int) -> int:
    """The part size for a file of `total` bytes: 8 MiB, or larger (whole MiB) when 8 MiB parts would
    pass S3's 10 000-part limit."""
    if total <= PART_SIZE * MAX_PARTS:
        return PART_SIZE
    mib = 1024 * 1024
    return math.ceil(total / MAX_PARTS / mib) * mib


class S3Storage(StorageBackend):
    """One bucket (and key prefix). The aiobotocore client is made on first use and kept until
    `close()`; requests share its connection pool (`threadpool_size` connections)."""

    name = "s3"

    def __init__(self, bucket: str, *, prefix: str = "", storage_class: str = "STANDARD",
                 region_name: str | None = None, endpoint_url: str | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None,
                 session_token: str | None = None, sse_customer_key: str | None = None,
                 sse_customer_algo: str = "AES256", max_connections: int = 40, max_concurrency: int = 2,
                 request_checksum_calculation: str = "when_required",
                 response_checksum_validation: str = "when_required") -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.storage_class = storage_class
        self.max_concurrency = max_concurrency
        self._client_kwargs: dict[str, Any] = {
            key: value for key, value in (
                ("region_name", region_name), ("endpoint_url", endpoint_url),
                ("aws_access_key_id", access_key_id), ("aws_secret_access_key", secret_access_key),
                ("aws_session_token", session_token)) if value is not None}
        self._max_connections = max_connections
        self._checksums = (request_checksum_calculation, response_checksum_validation)
        # SSE-C: the key must accompany every request that reads or writes the object's bytes.
        self._sse: dict[str, str] = (
            {"SSECustomerKey": sse_customer_key, "SSECustomerAlgorithm": sse_customer_algo}
            if sse_customer_key else {})
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._client_lock = asyncio.Lock()

    @classmethod
    def from_provider_config(cls, config: dict[str, Any]) -> S3Storage:
        """Build from a `media_storage_providers[].config` mapping (Synapse's keys). Raises ValueError
        naming the key for a missing `bucket`, an unknown key or a bad value, so a typo fails where the
        config is read rather than at the first upload. No connection is made here."""
        unknown = sorted(set(config) - KNOWN_KEYS)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} under {_WHERE} "
                             f"(known: {', '.join(sorted(KNOWN_KEYS))})")
        if not config.get("bucket"):
            raise ValueError(f"'bucket' is required under {_WHERE} (the S3 bucket's name)")
        for key in _STRING_KEYS:
            if key in config and not isinstance(config[key], str):
                raise ValueError(f"{key!r} under {_WHERE} must be a string")
        for key in _INT_KEYS:
            value = config.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{key!r} under {_WHERE} must be a whole number of at least 1")
        storage_class = config.get("storage_class", "STANDARD")
        if storage_class not in STORAGE_CLASSES:
            raise ValueError(f"'storage_class' under {_WHERE} must be one of {', '.join(STORAGE_CLASSES)}")
        for key in ("request_checksum_calculation", "response_checksum_validation"):
            if config.get(key, "when_required") not in CHECKSUM_SETTINGS:
                raise ValueError(f"{key!r} under {_WHERE} must be one of {', '.join(CHECKSUM_SETTINGS)}")
        if "sse_customer_algo" in config and "sse_customer_key" not in config:
            raise ValueError(f"'sse_customer_algo' under {_WHERE} needs 'sse_customer_key'")
        return cls(
            config["bucket"], prefix=config.get("prefix", ""), storage_class=storage_class,
            region_name=config.get("region_name"), endpoint_url=config.get("endpoint_url"),
            access_key_id=config.get("access_key_id"), secret_access_key=config.get("secret_access_key"),
            session_token=config.get("session_token"), sse_customer_key=config.get("sse_customer_key"),
            sse_customer_algo=config.get("sse_customer_algo", "AES256"),
            max_connections=config.get("threadpool_size", 40),
            max_concurrency=config.get("max_concurrency", 2),
            request_checksum_calculation=config.get("request_checksum_calculation", "when_required"),
            response_checksum_validation=config.get("response_checksum_validation", "when_required"))

    def object_key(self, key: str) -> str:
        """The bucket key of a store key (the prefix is prepended as is, as Synapse does)."""
        return self.prefix + key

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session

                config = AioConfig(max_pool_connections=self._max_connections,
                                   request_checksum_calculation=self._checksums[0],
                                   response_checksum_validation=self._checksums[1])
                stack = contextlib.AsyncExitStack()
                self._client = await stack.enter_async_context(
                    get_session().create_client("s3", config=config, **self._client_kwargs))
                self._stack = stack
        return self._client

    async def close(self) -> None:
        """Close the client and its connections (a later call makes a new one)."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def put(self, key: str, source: Path) -> None:
        """Upload `source` unless the bucket already has the key at the same size (keys name their
        bytes, so an object of the right size under the key is this file)."""
        total = (await asyncio.to_thread(source.stat)).st_size
        if await self.size(key) == total:
            return
        if total < PART_SIZE:
            stream = BytesBody(await asyncio.to_thread(source.read_bytes))
            client = await self._get_client()
            try:
                await client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=stream,
                                        StorageClass=self.storage_class, **self._sse)
            finally:
                stream.close()
        else:
            await self._put_multipart(key, source, total)

    async def _put_multipart(self, key: str, source: Path, total: int) -> None:
        """Multipart upload: at most `max_concurrency` parts read and in flight at a time. Any failure
        (or cancellation) aborts the upload so the bucket does not keep (and bill) orphan parts."""
        client = await self._get_client()
        object_key = self.object_key(key)
        handle = await asyncio.to_thread(open, source, "rb")  # before the upload: nothing to abort if this fails
        try:
            created = await client.create_multipart_upload(
                Bucket=self.bucket, Key=object_key, StorageClass=self.storage_class, **self._sse)
        except BaseException:
            handle.close()
            raise
        upload_id: str = created["UploadId"]
        part_size = part_size_for(total)
        count = math.ceil(total / part_size)
        etags: dict[int, str] = {}
        next_part = iter(range(1, count + 1))

        async def send_parts() -> None:
            # Each worker takes the next part number, reads that slice (positioned read: the workers
            # share one file handle) and uploads it before taking another.
            for number in next_part:
                offset = (number - 1) * part_size
                body = await asyncio.to_thread(os.pread, handle.fileno(), part_size, offset)
                if len(body) != min(part_size, total - offset):
                    raise OSError(f"{source} changed size while being uploaded to S3")
                stream = BytesBody(body)
                del body
                try:
                    sent = await client.upload_part(Bucket=self.bucket, Key=object_key, UploadId=upload_id,
                                                    PartNumber=number, Body=stream, **self._sse)
                finally:
                    stream.close()  # frees the part now, even if the request objects linger in a cycle
                etags[number] = sent["ETag"]

        try:
            try:
                async with asyncio.TaskGroup() as group:
                    for _ in range(min(self.max_concurrency, count)):
                        group.create_task(send_parts())
            except BaseExceptionGroup as failed:
                # The first part's failure as itself (a ClientError, an OSError), not a group.
                raise failed.exceptions[0] from None
            await client.complete_multipart_upload(
                Bucket=self.bucket, Key=object_key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"ETag": etags[n], "PartNumber": n} for n in sorted(etags)]})
        except BaseException:
            try:
                await client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
            except Exception:
                logger.warning("aborting the multipart upload of %s to S3 failed", object_key, exc_info=True)
            raise
        finally:
            handle.close()

    async def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        client = await self._get_client()
        try:
            head = await client.head_object(Bucket=self.bucket, Key=self.object_key(key), **self._sse)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        return int(head["ContentLength"])

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream [start, end) with a ranged GetObject. A missing object raises FileNotFoundError (as
        the local store does); a range starting at or past the end yields nothing (as a local read)."""
        from botocore.exceptions import ClientError

        if end is not None and end <= start:
            return
        extra: dict[str, str] = dict(self._sse)
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        client = await self._get_client()
        try:
            response = await client.get_object(Bucket=self.bucket, Key=self.object_key(key), **extra)
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"{self.object_key(key)} is not in S3 bucket {self.bucket}") from exc
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return
            raise
        body = response["Body"]
        try:
            while chunk := await body.read(CHUNK_SIZE):
                yield chunk
        finally:
            # Also on early exit (the generator closed): drop the connection rather than reading the
            # rest of a large body to return it to the pool.
            body.close()

    async def delete(self, key: str) -> None:
        client = await self._get_client()
        # DeleteObject succeeds for a missing key.
        await client.delete_object(Bucket=self.bucket, Key=self.object_key(key))


class BytesBody(io.RawIOBase):
    """A request body held in memory, handed to aiobotocore as a stream so that aiohttp sends it in
    64 KiB chunks without copying it: given `bytes`, aiohttp passes the whole body to the socket
    transport, which on Python 3.11 copies whatever the socket did not take at once into its buffer (a
    second copy of the body), and given an `io.BytesIO` it takes the buffer, which copies it. Seekable,
    so botocore can measure it, hash it for signing and rewind it for a retry."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._view = memoryview(data)
        self._pos = 0

    def close(self) -> None:
        self._view.release()
        self._view = memoryview(b"")
        super().close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        chunk = bytes(self._view[self._pos:end])
        self._pos = max(self._pos, end)
        return chunk

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        chunk = self.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)


def _is_missing(exc: Any) -> bool:
    """A missing object (not a missing bucket: NoSuchBucket is an error; a HEAD has no body to tell
    them apart, so a missing bucket reads as a missing object there, as with Synapse's module)."""
    return exc.response.get("Error", {}).get("Code") in _MISSING_CODES
