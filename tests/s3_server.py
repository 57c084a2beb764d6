"""A real S3 API for tests: moto's server mode, in a process of its own on a free 127.0.0.1 port.

A separate process (not moto's in-thread server) so the objects moto keeps in memory do not count in
the test process's memory measurements, and so its werkzeug threads do not share the test's GIL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.services import free_port, port_open

ACCESS_KEY = "hs-test-key"
SECRET_KEY = "hs-test-secret"
REGION = "us-east-1"


class MotoServer:
    """`python -m moto.server` on a free port; `endpoint_url` once started."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("moto server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def provider_config(self, bucket: str, **extra: Any) -> dict[str, Any]:
        """A `media_storage_providers[].config` mapping (Synapse's keys) for a bucket on this server."""
        return {"bucket": bucket, "endpoint_url": self.endpoint_url, "region_name": REGION,
                "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY, **extra}

    def client(self) -> Any:
        """An aiobotocore S3 client of this server (an async context manager)."""
        from aiobotocore.session import get_session

        return get_session().create_client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                                           aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    async def create_bucket(self, name: str | None = None) -> str:
        """A new bucket (a fresh name unless given): each test gets its own, so none sees another's."""
        bucket = name or f"hs-test-{uuid.uuid4().hex[:12]}"
        async with self.client() as client:
            await client.create_bucket(Bucket=bucket)
        return bucket

    async def keys(self, bucket: str) -> list[str]:
        """Every key in the bucket (tests keep them under 1000: one page)."""
        async with self.client() as client:
            listed = await client.list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listed.get("Contents", []))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
