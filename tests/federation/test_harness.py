"""The federation test harness itself: Synapse and hs serve verified TLS on loopback with the test CA,
users register on each the same way, and Synapse's outbound federation reaches a loopback server
whose certificate the test CA signed."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.federation.client import MatrixServer, TlsClient, unique
from tests.federation.conftest import MakeFedHs
from tests.federation.synapse import SYNAPSE_VERSION, SynapseServer
from tests.federation.tls import TestCA
from tests.services import free_port


async def test_synapse_federation_version_over_tls(synapse: SynapseServer) -> None:
    assert synapse.server_name == f"localhost:{synapse.port}"
    async with synapse.client() as c:
        status, data = await c.request("GET", "/_matrix/federation/v1/version", auth=False)
        assert status == 200, data
        assert data["server"]["name"] == "Synapse"
        assert data["server"]["version"].startswith(SYNAPSE_VERSION)
        # Its signing key is served too (what other servers fetch to verify its events).
        status, keys = await c.request("GET", "/_matrix/key/v2/server", auth=False)
        assert status == 200, keys
        assert keys["server_name"] == synapse.server_name
        assert keys["verify_keys"]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_fed_hs_serves_tls_verified_by_test_ca_only(make_fed_hs: MakeFedHs, engine: str) -> None:
    hs = await make_fed_hs(engine)
    assert hs.server_name == f"localhost:{hs.port}"
    assert hs.base_url == f"https://localhost:{hs.port}"
    async with hs.client() as c:
        status, data = await c.request("GET", "/_matrix/client/versions", auth=False)
    assert status == 200, data
    assert isinstance(data["versions"], list) and data["versions"]

    # The certificate names 127.0.0.1 as well as localhost.
    async with TlsClient(f"https://127.0.0.1:{hs.port}", hs.cert.ca_path) as by_ip:
        status, _ = await by_ip.request("GET", "/_matrix/client/versions", auth=False)
    assert status == 200

    # A client trusting only the system's CAs refuses the certificate.
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await plain.get(hs.base_url + "/_matrix/client/versions")


async def test_register_and_whoami(remote_server: MatrixServer) -> None:
    localpart = unique("harness")
    user_id, token = await remote_server.register_user(localpart)
    assert user_id == f"@{localpart}:{remote_server.server_name}"
    async with remote_server.client(token) as c:
        status, data = await c.request("GET", "/account/whoami")
        assert status == 200, data
        assert data["user_id"] == user_id
        # An admin registered the same way is an admin on either server.
    admin_id, admin_token = await remote_server.register_user(unique("admin"), admin=True)
    async with remote_server.client(admin_token) as c:
        status, data = await c.request("GET", "/account/whoami")
        assert status == 200 and data["user_id"] == admin_id


async def test_synapse_federates_out_to_loopback_with_test_ca(synapse: SynapseServer, federation_ca: TestCA,
                                                              tmp_path: Path) -> None:
    """Synapse sends a federation request to a stub server on loopback: its TLS trusts the test CA
    and `ip_range_whitelist` lets it connect. (The stub stands in for hs, whose federation API is
    tested elsewhere.)"""
    cert = federation_ca.issue(tmp_path / "stub-tls")
    port = free_port()
    seen: list[tuple[str, str]] = []
    got = asyncio.Event()

    async def profile(request: web.Request) -> web.Response:
        seen.append((request.path_qs, request.headers.get("Authorization", "")))
        got.set()
        return web.json_response({"displayname": "Stub User"})

    async def anything(request: web.Request) -> web.Response:
        seen.append((request.path_qs, request.headers.get("Authorization", "")))
        return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "stub"}, status=404)

    app = web.Application()
    app.router.add_get("/_matrix/federation/v1/query/profile", profile)
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert.cert_path), str(cert.key_path))
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        _, token = await synapse.register_user(unique("prober"))
        remote_user = f"@someone:localhost:{port}"
        async with synapse.client(token) as c:
            status, data = await c.request("GET", f"/profile/{remote_user}")
        assert got.is_set(), (status, data, seen, synapse.log_tail(30))
        assert status == 200 and data.get("displayname") == "Stub User", (status, data)
        _, auth = next(s for s in seen if s[0].startswith("/_matrix/federation/v1/query/profile"))
        assert auth.startswith("X-Matrix ") and f'origin="{synapse.server_name}"' in auth, auth
    finally:
        await runner.cleanup()
