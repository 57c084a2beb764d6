"""The `hs` pytest plugin (hs.testing): its fixtures inside this suite (the plugin is loaded through its
pytest11 entry point here too, beside tests/conftest.py's fixtures), and a foreign test suite in a
directory of its own, run by a separate pytest in strict asyncio mode, that finds the fixtures through
the installed entry point alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hs.testing import ThreadedHomeServer
from hs.testing.process import register_user_sync


def test_entry_point_is_installed() -> None:
    (ep,) = [ep for ep in entry_points(group="pytest11") if ep.name == "hs"]
    assert ep.value == "hs.testing.plugin"


async def whoami(base_url: str, token: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(
            f"{base_url}/_matrix/client/v3/account/whoami", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        return dict(await resp.json())


async def test_user_factory_registers_through_the_api(hs_server: Any, hs_user_factory: Any) -> None:
    user_id, token, device_id = await hs_user_factory("alice")
    assert user_id == f"@alice:{hs_server.server_name}"
    assert await whoami(hs_server.base_url, token) == {"user_id": user_id, "device_id": device_id,
                                                      "is_guest": False}
    # Without a name: a fresh one each time.
    first, second = await hs_user_factory(), await hs_user_factory()
    assert first.user_id != second.user_id
    # `hs_server` runs on the test's loop: its internals are at hand (the user is in its database).
    assert await hs_server.hs.user_store.get_user(user_id) is not None


@pytest.mark.hs_config(enable_registration=False)
async def test_hs_config_marker_reaches_the_server(hs_server: Any, hs_user_factory: Any) -> None:
    assert hs_server.config.enable_registration is False
    with pytest.raises(RuntimeError, match="403"):
        await hs_user_factory("nobody")


async def test_server_factory_and_session_server(hs_server_factory: Any, hs_server_session: Any,
                                                 hs_user_factory: Any) -> None:
    other = await hs_server_factory(server_name="other.local")
    user = await hs_user_factory("bob", server=other)
    assert user.user_id == "@bob:other.local"
    shared = await hs_user_factory(server=hs_server_session)
    assert (await whoami(hs_server_session.base_url, shared.access_token))["user_id"] == shared.user_id


def test_threaded_server_from_sync_code(tmp_path: Path) -> None:
    """Blocking calls from the test's thread, coroutines on the server's loop through `run`."""
    with ThreadedHomeServer(tmp_path / "hs", {"server_name": "threaded.local"}) as srv:
        user = srv.register_user("carol")
        assert user.user_id == "@carol:threaded.local"
        server = srv.server
        assert server is not None
        row = srv.run(server.hs.user_store.get_user(user.user_id))
        assert row is not None and row["user_id"] == user.user_id
    with pytest.raises(RuntimeError, match="M_USER_IN_USE|400"):
        with ThreadedHomeServer(tmp_path / "hs", {"server_name": "threaded.local"}) as again:  # carol exists
            again.register_user("carol")


FOREIGN_SUITE = '''
import json
import urllib.request

import pytest


def test_sync_process(hs_process):
    user_id, token, device_id = hs_process.register_user("dave")
    req = urllib.request.Request(hs_process.base_url + "/_matrix/client/v3/account/whoami",
                                 headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(req) as resp:
        assert json.loads(resp.read())["user_id"] == user_id
    assert (hs_process.data_dir / "homeserver.yaml").exists()


def test_sync_session_server(hs_server_session):
    assert hs_server_session.register_user("erin").user_id == "@erin:test.local"


@pytest.mark.asyncio
@pytest.mark.hs_config(server_name="strict.local")
async def test_async_in_strict_mode(hs_server, hs_user_factory):
    user = await hs_user_factory("frank")
    assert user.user_id == "@frank:strict.local"


def test_user_fixture_of_the_suite_is_not_shadowed(server):
    assert server == "the suite's own"
'''

FOREIGN_CONFTEST = '''
import pytest


@pytest.fixture
def server():
    return "the suite's own"
'''


def test_foreign_suite_finds_the_fixtures_through_the_entry_point(tmp_path: Path) -> None:
    """A project of its own (no hs conftest, default strict asyncio mode, its own `server` fixture)."""
    (tmp_path / "test_foreign.py").write_text(textwrap.dedent(FOREIGN_SUITE))
    (tmp_path / "conftest.py").write_text(textwrap.dedent(FOREIGN_CONFTEST))
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed" in run.stdout, run.stdout


def test_register_user_sync_reports_the_error(tmp_path: Path) -> None:
    with ThreadedHomeServer(tmp_path / "hs", {"enable_registration": False}) as srv:
        with pytest.raises(RuntimeError, match="403"):
            register_user_sync(srv.base_url, "nobody")
