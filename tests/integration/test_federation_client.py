"""FederationClient against a real HTTPS server on 127.0.0.1 whose certificate a throwaway CA signed.

The destination is `localhost:<port>` (an explicit port, so no .well-known or SRV is involved). The
server counts accepted TCP connections, so "refused before connecting" and "connection reused" are
observed where they happen rather than inferred from the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hs.config import HomeserverConfig
from hs.events.signing import SigningKey, verify_signed_json
from hs.federation.client import (
    USER_AGENT,
    FederationClient,
    FederationDenied,
    FederationError,
    FederationUnreachable,
)
from hs.federation.discovery import (
    WELL_KNOWN_MAX_SIZE,
    ServerResolver,
    SrvRecord,
    WellKnownFetchError,
    WellKnownResponse,
)
from hs.federation.xmatrix import parse_x_matrix

ORIGIN = "origin.test"
KEY = SigningKey.from_seed("t1", b"\x07" * 32)
BIG = 64 * 1024


# -- a throwaway CA ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca_path: Path
    cert_path: Path
    key_path: Path
    other_ca_path: Path  # a CA that did not sign the server's certificate
    wrong_cert_path: Path  # signed by the CA, but for another name than localhost / 127.0.0.1
    wrong_key_path: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, names: list[x509.GeneralName],
           cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name("hs test server")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _make_ca("hs test CA")
    _, other_ca = _make_ca("some other CA")
    pki = Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "other-ca.pem", d / "wrong.pem", d / "wrong.key")
    pki.ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.other_ca_path.write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    _issue(ca_key, ca_cert, [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
           pki.cert_path, pki.key_path)
    _issue(ca_key, ca_cert, [x509.DNSName("elsewhere.test")], pki.wrong_cert_path, pki.wrong_key_path)
    return pki


# -- the remote server -------------------------------------------------------------------------------
@dataclass
class Seen:
    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes
    peer_port: int


@dataclass
class Remote:
    port: int
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    sni: list[str | None] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return f"localhost:{self.port}"


@contextlib.asynccontextmanager
async def run_remote(cert_path: Path, key_path: Path,
                     max_tls: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> AsyncIterator[Remote]:
    """An HTTPS server on 127.0.0.1 that records requests, accepted connections and SNI names."""
    state = Remote(port=0)

    async def record(request: web.Request) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        state.requests.append(Seen(request.method, request.raw_path, dict(request.headers),
                                   await request.read(), peer[1] if peer else -1))

    async def echo(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"ok": True, "method": request.method})

    async def big(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"pad": "x" * BIG})

    async def big_chunked(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"pad": "')
        for _ in range(BIG // 1024):
            await response.write(b"x" * 1024)
        await response.write(b'"}')
        await response.write_eof()
        return response

    async def forbidden(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"errcode": "M_FORBIDDEN", "error": "not for you"}, status=403)

    async def broken(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=502, text="<html>bad gateway</html>")

    async def not_json(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=200, text="hello")

    async def stall(request: web.Request) -> web.Response:
        await record(request)
        await state.release.wait()
        return web.json_response({})

    async def well_known(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"m.server": "target.example:1"}, headers={"Cache-Control": "max-age=600"})

    async def moved(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/.well-known/matrix/server")

    async def huge(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"m.server": "x" * WELL_KNOWN_MAX_SIZE})

    app = web.Application()
    app.router.add_route("*", "/_matrix/test/echo", echo)
    app.router.add_get("/_matrix/test/big", big)
    app.router.add_get("/_matrix/test/big_chunked", big_chunked)
    app.router.add_get("/_matrix/test/forbidden", forbidden)
    app.router.add_get("/_matrix/test/broken", broken)
    app.router.add_get("/_matrix/test/not_json", not_json)
    app.router.add_get("/_matrix/test/stall", stall)
    app.router.add_get("/.well-known/matrix/server", well_known)
    app.router.add_get("/.well-known/matrix/moved", moved)
    app.router.add_get("/.well-known/matrix/huge", huge)
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None
    handler_factory = runner.server

    def counting_factory() -> Any:
        state.connections += 1
        return handler_factory()

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_path, key_path)
    tls.maximum_version = max_tls

    def on_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        state.sni.append(name)

    tls.sni_callback = on_sni
    server = await asyncio.get_running_loop().create_server(counting_factory, "127.0.0.1", 0, ssl=tls)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        state.release.set()
        server.close()
        await runner.cleanup()
        await server.wait_closed()


@pytest.fixture
async def remote(pki: Pki) -> AsyncIterator[Remote]:
    async with run_remote(pki.cert_path, pki.key_path) as state:
        yield state


@pytest.fixture
async def make_client(pki: Pki) -> AsyncIterator[Callable[..., FederationClient]]:
    clients: list[FederationClient] = []

    def factory(**config: Any) -> FederationClient:
        config.setdefault("ip_range_whitelist", ["127.0.0.0/8"])
        config.setdefault("federation_custom_ca_list", [str(pki.ca_path)])
        client = FederationClient(HomeserverConfig(server_name=ORIGIN, **config), lambda: KEY)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


def _verify(seen: Seen, destination: str, content: Any | None) -> None:
    auth = parse_x_matrix(seen.headers["Authorization"])
    assert (auth.origin, auth.destination, auth.key_id) == (ORIGIN, destination, KEY.key_id)
    verify_signed_json(auth.signed_json(seen.method, seen.raw_path, destination, content),
                       ORIGIN, auth.key_id, KEY.verify_key)


# -- tests --------------------------------------------------------------------------------------------
async def test_signed_get_verifies(remote: Remote, make_client: Callable[..., FederationClient]) -> None:
    client = make_client()
    result = await client.get_json(remote.name, "/_matrix/test/echo",
                                   {"v": ["1", "two words"], "k": "a/b&c=d", "ü": "é"})
    assert result == {"ok": True, "method": "GET"}
    [seen] = remote.requests
    assert seen.raw_path == "/_matrix/test/echo?v=1&v=two%20words&k=a%2Fb%26c%3Dd&%C3%BC=%C3%A9"
    assert seen.headers["Host"] == remote.name
    assert seen.headers["User-Agent"] == USER_AGENT and USER_AGENT.startswith("hs/")
    assert seen.body == b""
    _verify(seen, remote.name, None)


async def test_unsigned_get_has_no_authorization(remote: Remote,
                                                 make_client: Callable[..., FederationClient]) -> None:
    await make_client().get_json(remote.name, "/_matrix/test/echo", signed=False)
    assert "Authorization" not in remote.requests[0].headers


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_bodies_are_sent_and_signed(method: str, remote: Remote,
                                          make_client: Callable[..., FederationClient]) -> None:
    client = make_client()
    body = {"pdus": [{"type": "m.room.message", "content": {"body": "héllo"}}], "n": 2 ** 53 - 1}
    send = client.put_json if method == "PUT" else client.post_json
    assert await send(remote.name, "/_matrix/test/echo", body, {"q": "1"}) == {"ok": True, "method": method}
    [seen] = remote.requests
    assert seen.method == method and seen.raw_path == "/_matrix/test/echo?q=1"
    assert seen.headers["Content-Type"] == "application/json"
    assert json.loads(seen.body) == body
    _verify(seen, remote.name, body)


async def test_connection_is_reused(remote: Remote, make_client: Callable[..., FederationClient]) -> None:
    client = make_client()
    await client.get_json(remote.name, "/_matrix/test/echo")
    await client.put_json(remote.name, "/_matrix/test/echo", {"a": 1})
    await client.get_json(remote.name, "/_matrix/test/echo", signed=False)
    assert len({seen.peer_port for seen in remote.requests}) == 1
    assert remote.connections == 1


async def test_unknown_ca_is_refused(remote: Remote, pki: Pki, make_client: Callable[..., FederationClient]) -> None:
    configs: list[dict[str, Any]] = [{"federation_custom_ca_list": []},
                                     {"federation_custom_ca_list": [str(pki.other_ca_path)]}]
    for config in configs:
        with pytest.raises(FederationUnreachable, match="TLS") as info:
            await make_client(**config).get_json(remote.name, "/_matrix/test/echo")
        assert info.value.destination == remote.name and info.value.status is None
    assert remote.requests == []


async def test_ca_file_relative_to_config_dir(remote: Remote, pki: Pki,
                                              make_client: Callable[..., FederationClient]) -> None:
    client = make_client(federation_custom_ca_list=[pki.ca_path.name], config_dir=str(pki.ca_path.parent))
    assert (await client.get_json(remote.name, "/_matrix/test/echo"))["ok"] is True


async def test_sni_and_host_for_names_and_ip_literals(remote: Remote,
                                                      make_client: Callable[..., FederationClient]) -> None:
    client = make_client()
    assert (await client.get_json(remote.name, "/_matrix/test/echo"))["ok"] is True
    # the certificate also names 127.0.0.1: an IP literal is verified against it, without SNI
    assert (await client.get_json(f"127.0.0.1:{remote.port}", "/_matrix/test/echo"))["ok"] is True
    assert remote.sni == ["localhost", None]
    assert [seen.headers["Host"] for seen in remote.requests] == [remote.name, f"127.0.0.1:{remote.port}"]


async def test_certificate_for_another_name_is_refused(pki: Pki,
                                                       make_client: Callable[..., FederationClient]) -> None:
    async with run_remote(pki.wrong_cert_path, pki.wrong_key_path) as wrong:
        with pytest.raises(FederationUnreachable, match="TLS"):
            await make_client().get_json(wrong.name, "/_matrix/test/echo")
        assert wrong.requests == [] and wrong.connections == 1


async def test_srv_delegation_connects_to_the_target_but_checks_the_server_name(
        remote: Remote, pki: Pki, make_client: Callable[..., FederationClient]) -> None:
    """"localhost" without a port: no .well-known, then an SRV record naming 127.0.0.1 and the test
    port. The certificate and Host header must be localhost's, not the SRV target's."""

    async def no_well_known(url: str) -> WellKnownResponse:
        return WellKnownResponse(404, {}, b"")

    async def srv(name: str) -> list[SrvRecord]:
        return [SrvRecord(0, 0, remote.port, "127.0.0.1")] if name == "_matrix-fed._tcp.localhost" else []

    client = make_client()
    client.resolver = ServerResolver(no_well_known, srv)
    assert (await client.put_json("localhost", "/_matrix/test/echo", {"x": 1}))["ok"] is True
    [seen] = remote.requests
    assert seen.headers["Host"] == "localhost" and remote.sni == ["localhost"]
    _verify(seen, "localhost", {"x": 1})
    # the same SRV target serving a certificate for another name is refused
    async with run_remote(pki.wrong_cert_path, pki.wrong_key_path) as wrong:
        async def srv_wrong(name: str) -> list[SrvRecord]:
            return [SrvRecord(0, 0, wrong.port, "127.0.0.1")] if name == "_matrix-fed._tcp.localhost" else []

        client = make_client()
        client.resolver = ServerResolver(no_well_known, srv_wrong)
        with pytest.raises(FederationUnreachable, match="TLS"):
            await client.get_json("localhost", "/_matrix/test/echo")


async def test_well_known_hop(remote: Remote, make_client: Callable[..., FederationClient]) -> None:
    """The client's one-hop fetcher: same TLS and IP filter, redirects returned (discovery follows
    them), body capped at 50 KiB."""
    base = f"https://localhost:{remote.port}/.well-known/matrix"
    client = make_client()
    response = await client.fetch_well_known_hop(f"{base}/server")
    assert response.status == 200 and response.header("cache-control") == "max-age=600"
    assert b'"m.server"' in response.body
    moved = await client.fetch_well_known_hop(f"{base}/moved")
    assert moved.status == 302 and moved.header("Location") == "/.well-known/matrix/server"
    with pytest.raises(WellKnownFetchError, match="larger than") as info:
        await client.fetch_well_known_hop(f"{base}/huge")
    assert not info.value.temporary
    with pytest.raises(WellKnownFetchError, match="forbidden address") as info:
        await make_client(ip_range_whitelist=[]).fetch_well_known_hop(f"{base}/server")
    assert not info.value.temporary
    with pytest.raises(WellKnownFetchError) as info:
        await make_client(federation_custom_ca_list=[]).fetch_well_known_hop(f"{base}/server")
    assert info.value.temporary
    assert len(remote.requests) == 3


async def test_unusable_ca_file_is_a_clear_error(remote: Remote, tmp_path: Path,
                                                 make_client: Callable[..., FederationClient]) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    for path in (tmp_path / "missing.pem", tmp_path / "junk.pem"):
        with pytest.raises(FederationError, match="federation_custom_ca_list unusable"):
            await make_client(federation_custom_ca_list=[str(path)]).get_json(remote.name, "/_matrix/test/echo")
    assert remote.connections == 0


async def test_verification_can_be_disabled(remote: Remote, pki: Pki,
                                            make_client: Callable[..., FederationClient]) -> None:
    client = make_client(federation_custom_ca_list=[str(pki.other_ca_path)], federation_verify_certificates=False)
    assert (await client.get_json(remote.name, "/_matrix/test/echo"))["ok"] is True


async def test_minimum_tls_version(pki: Pki, make_client: Callable[..., FederationClient]) -> None:
    async with run_remote(pki.cert_path, pki.key_path, max_tls=ssl.TLSVersion.TLSv1_2) as tls12:
        assert (await make_client(federation_client_minimum_tls_version="1.2")
                .get_json(tls12.name, "/_matrix/test/echo"))["ok"] is True
        # the server ends the handshake (a protocol version alert, seen as a reset by the client)
        with pytest.raises(FederationUnreachable):
            await make_client(federation_client_minimum_tls_version="1.3").get_json(tls12.name, "/_matrix/test/echo")
        assert len(tls12.requests) == 1


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_default_blacklist_refuses_loopback_before_connecting(
        host: str, remote: Remote, make_client: Callable[..., FederationClient]) -> None:
    client = make_client(ip_range_whitelist=[])
    with pytest.raises(FederationDenied, match="127.0.0.1") as info:
        await client.get_json(f"{host}:{remote.port}", "/_matrix/test/echo")
    assert info.value.destination == f"{host}:{remote.port}"
    assert remote.connections == 0
    # an explicit blacklist that leaves loopback out lets it through
    assert (await make_client(ip_range_whitelist=[], ip_range_blacklist=["10.0.0.0/8"])
            .get_json(f"{host}:{remote.port}", "/_matrix/test/echo"))["ok"] is True


async def test_domain_whitelist(remote: Remote, make_client: Callable[..., FederationClient]) -> None:
    client = make_client(federation_domain_whitelist=["other.example"])
    with pytest.raises(FederationDenied, match="federation_domain_whitelist"):
        await client.get_json(remote.name, "/_matrix/test/echo")
    assert remote.connections == 0
    client = make_client(federation_domain_whitelist=["other.example", remote.name])
    assert (await client.get_json(remote.name, "/_matrix/test/echo"))["ok"] is True


@pytest.mark.parametrize("path", ["/_matrix/test/big", "/_matrix/test/big_chunked"])
async def test_oversized_body_is_refused(path: str, remote: Remote,
                                         make_client: Callable[..., FederationClient]) -> None:
    client = make_client()
    with pytest.raises(FederationError, match="larger than 1000 bytes") as info:
        await client.get_json(remote.name, path, max_size=1000)
    assert type(info.value) is FederationError and info.value.status == 200
    result = await client.get_json(remote.name, path, max_size=BIG + 100)
    assert len(result["pad"]) == BIG


async def test_matrix_error_propagates(remote: Remote, make_client: Callable[..., FederationClient]) -> None:
    with pytest.raises(FederationError) as info:
        await make_client().get_json(remote.name, "/_matrix/test/forbidden")
    err = info.value
    assert type(err) is FederationError
    assert (err.destination, err.status, err.errcode) == (remote.name, 403, "M_FORBIDDEN")
    assert "not for you" in err.error
    assert err.body == {"errcode": "M_FORBIDDEN", "error": "not for you"}
    assert str(err) == f"{remote.name}: HTTP 403 M_FORBIDDEN GET /_matrix/test/forbidden: not for you"


async def test_non_matrix_error_and_non_json_success(remote: Remote,
                                                     make_client: Callable[..., FederationClient]) -> None:
    client = make_client()
    with pytest.raises(FederationError) as info:
        await client.get_json(remote.name, "/_matrix/test/broken")
    assert (info.value.status, info.value.errcode) == (502, None)
    assert "bad gateway" in str(info.value)
    with pytest.raises(FederationError, match="not JSON") as info:
        await client.get_json(remote.name, "/_matrix/test/not_json")
    assert info.value.status == 200


async def test_unreachable(remote: Remote, make_client: Callable[..., FederationClient]) -> None:
    # a port nobody listens on: bind one, note it, close it
    probe = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
    dead_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(FederationUnreachable) as info:
        await make_client().get_json(f"localhost:{dead_port}", "/_matrix/test/echo")
    assert info.value.destination == f"localhost:{dead_port}" and info.value.status is None
    # a server that does not answer within the timeout
    with pytest.raises(FederationUnreachable, match="timed out"):
        await make_client().get_json(remote.name, "/_matrix/test/stall", timeout=0.3)
    # a malformed server name is an error of its own, not "unreachable"
    with pytest.raises(FederationError, match="invalid server name") as err:
        await make_client().get_json("bad name", "/_matrix/test/echo")
    assert type(err.value) is FederationError


async def test_closed_client_refuses(remote: Remote, make_client: Callable[..., FederationClient]) -> None:
    client = make_client()
    await client.get_json(remote.name, "/_matrix/test/echo")
    await client.close()
    with pytest.raises(FederationUnreachable, match="closed"):
        await client.get_json(remote.name, "/_matrix/test/echo")
    await client.close()  # idempotent
