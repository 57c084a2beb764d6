"""The `hs` pytest plugin: throwaway Matrix homeservers for the tests of bots, bridges and clients.

Installed with hs (a `pytest11` entry point), so its fixtures are there in any test suite of an
environment where hs is installed; nothing runs unless a test asks for a fixture. Every name starts
with `hs_`. See docs/testing_with_hs.md.

- `hs_server`: an in-process homeserver on the test's event loop (async tests; ~20 ms), fresh per test.
- `hs_server_factory`: `await hs_server_factory(**config)` for more than one, or another config.
- `hs_server_session`: one in-process homeserver for the whole session, on an event loop of its own in
  a thread: for sync tests, and async tests on any loop.
- `hs_process` / `hs_process_session`: `hs run` as a subprocess on a generated config (sync; `.base_url`).
- `hs_process_factory`: `hs_process_factory(**config)`, started.
- `hs_user_factory`: `await hs_user_factory("alice")` -> `(user_id, access_token, device_id)`, registered
  through the registration API on `hs_homeserver` (by default `hs_server`; override `hs_homeserver` to
  register on another) or on `server=`. Sync servers also have `.register_user(name)`.
- `hs_cluster`: a worker cluster (PostgreSQL, Redis, nginx) for the session; `hs_postgres` and
  `hs_redis_url` give the services it runs on (`HS_TEST_POSTGRES`, `HS_TEST_REDIS`, else started).
- `hs_config`: config overrides for `hs_server` and `hs_process`: the `@pytest.mark.hs_config(key=value)`
  marker, or override the fixture.

hs itself is imported when a fixture first runs, not when pytest loads the plugin: a test session that
does not use these fixtures does not pay for it.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from hs.testing.cluster import ClusterServer
    from hs.testing.process import HsProcess, ThreadedHomeServer
    from hs.testing.server import RegisteredUser, TestHomeServer

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the async fixtures then say what is missing
    pytest_asyncio = None  # type: ignore[assignment]


class Homeserver(Protocol):
    """What every server fixture gives: its URL and name, and async registration."""

    @property
    def base_url(self) -> str: ...

    @property
    def server_name(self) -> str: ...

    async def aregister_user(self, name: str, password: str = ...) -> RegisteredUser: ...


UserFactory = Callable[..., Awaitable["RegisteredUser"]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "hs_config(**overrides): homeserver config keys for the hs_server and hs_process fixtures")


@pytest.fixture
def hs_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Top-level config keys that replace the test defaults of `hs_server` and `hs_process`: the
    `hs_config` markers' keyword arguments (the closest marker wins on a key)."""
    overrides: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("hs_config"))):
        overrides.update(marker.kwargs)
    return overrides


if pytest_asyncio is not None:
    @pytest_asyncio.fixture
    async def hs_server_factory(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[
            Callable[..., Awaitable[TestHomeServer]]]:
        """`await hs_server_factory(**config)`: a started in-process homeserver on SQLite, on the test's
        event loop; all stopped after the test."""
        from hs.testing.server import TestHomeServer

        started: list[TestHomeServer] = []

        async def factory(**config: Any) -> TestHomeServer:
            srv = TestHomeServer(tmp_path_factory.mktemp("hs"), "sqlite", None, config)
            await srv.start()
            started.append(srv)
            return srv

        yield factory
        for srv in reversed(started):
            await srv.stop()

    @pytest_asyncio.fixture
    async def hs_server(hs_server_factory: Callable[..., Awaitable[TestHomeServer]],
                        hs_config: dict[str, Any]) -> TestHomeServer:
        """A fresh in-process homeserver for one async test (`.base_url`, `.server_name`, `.hs`)."""
        return await hs_server_factory(**hs_config)
else:  # pragma: no cover
    @pytest.fixture
    def hs_server_factory() -> None:
        pytest.fail("hs_server_factory is async and needs pytest-asyncio: pip install pytest-asyncio")

    @pytest.fixture
    def hs_server() -> None:
        pytest.fail("hs_server is async and needs pytest-asyncio (pip install pytest-asyncio); "
                    "hs_server_session and hs_process work without it")


@pytest.fixture(scope="session")
def hs_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedHomeServer]:
    """One in-process homeserver for the whole session, on its own loop in a thread. Tests share its
    database: register users with distinct names."""
    from hs.testing.process import ThreadedHomeServer

    with ThreadedHomeServer(tmp_path_factory.mktemp("hs-session")) as srv:
        yield srv


@pytest.fixture
def hs_process_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., HsProcess]]:
    """`hs_process_factory(**config)`: a started `hs run` subprocess; all stopped after the test."""
    from hs.testing.process import HsProcess

    started: list[HsProcess] = []

    def factory(**config: Any) -> HsProcess:
        proc = HsProcess(tmp_path_factory.mktemp("hs-process"), config)
        started.append(proc)
        proc.start()
        return proc

    yield factory
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def hs_process(hs_process_factory: Callable[..., HsProcess], hs_config: dict[str, Any]) -> HsProcess:
    """A fresh `hs run` subprocess for one test (`.base_url`, `.register_user(name)`)."""
    return hs_process_factory(**hs_config)


@pytest.fixture(scope="session")
def hs_process_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HsProcess]:
    """One `hs run` subprocess for the whole session."""
    from hs.testing.process import HsProcess

    with HsProcess(tmp_path_factory.mktemp("hs-process-session")) as proc:
        yield proc


@pytest.fixture
def hs_homeserver(hs_server: Homeserver) -> Homeserver:
    """The homeserver `hs_user_factory` registers on by default. Override it to choose another, e.g.
    `@pytest.fixture def hs_homeserver(hs_server_session): return hs_server_session`."""
    return hs_server


@pytest.fixture
def hs_user_factory(hs_homeserver: Homeserver) -> UserFactory:
    """`await hs_user_factory(name=None, password="password123", server=None)`: a user registered
    through the Client-Server registration API; returns `(user_id, access_token, device_id)`. Without a
    name, a fresh one is made up; without `server`, on `hs_homeserver`."""
    counter = itertools.count(1)

    async def make_user(name: str | None = None, password: str = "password123",
                        server: Homeserver | None = None) -> RegisteredUser:
        import uuid

        return await (server or hs_homeserver).aregister_user(
            name or f"user{next(counter)}-{uuid.uuid4().hex[:6]}", password)

    return make_user


@pytest.fixture(scope="session")
def hs_postgres() -> Iterator[str]:
    """A PostgreSQL server's DSN, without a database: `HS_TEST_POSTGRES`, the machine's on port 5432, or
    a throwaway server (needs the postgresql binaries) stopped at the end of the session."""
    from hs.testing.services import postgres_server

    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def hs_redis_url() -> Iterator[str]:
    """A Redis URL: `HS_TEST_REDIS`, or a throwaway redis-server stopped at the end of the session."""
    from hs.testing.services import redis_server

    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def hs_cluster(hs_postgres: str, hs_redis_url: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServer]:
    """A worker cluster for the session (main, 2 event persisters, 2 sync workers, a stream writer, a
    background worker) on a fresh database dropped afterwards; `.base_url` is nginx in front of it
    (nginx must be installed), `.cluster` the processes (stop, start, restart an instance by name)."""
    from hs.testing.cluster import ClusterServer, running_cluster

    with running_cluster(hs_postgres, hs_redis_url, tmp_path_factory.mktemp("hs-cluster")) as cluster:
        yield ClusterServer(cluster)
