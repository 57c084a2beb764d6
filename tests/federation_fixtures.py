"""In-process homeservers that federate with each other over real, verified TLS on loopback.

A throwaway certificate authority signs one certificate for `localhost` / 127.0.0.1; each server is
`localhost:<port>`, serves that certificate on one listener (client, federation, keys), trusts the CA
for outbound federation and may reach loopback addresses (which outbound federation refuses by
default).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hs.app import create_app
from hs.runner import server_tls_context
from tests.harness import OPEN_CLIENTS, Client, TestHomeServer
from tests.services import create_database, drop_database, free_port


@dataclass(frozen=True)
class TestCertificate:
    __test__ = False

    cert_path: Path
    key_path: Path
    ca_path: Path

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts the test CA (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.ca_path))


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_test_certificate(folder: Path) -> TestCertificate:
    """A CA and a certificate it signs for localhost and 127.0.0.1, valid for a day, as PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hs test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = TestCertificate(folder / "server.crt", folder / "server.key", folder / "ca.crt")
    paths.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key_path.write_bytes(_pem_key(key))
    paths.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths


class FederatingServer(TestHomeServer):
    """tests/harness.py's TestHomeServer as `localhost:<port>` behind TLS, federating with its peers."""

    __test__ = False

    def __init__(self, data_dir: Path, engine: str, dsn: str | None, cert: TestCertificate,
                 overrides: dict[str, Any]) -> None:
        port = free_port()
        config = {
            "server_name": f"localhost:{port}",
            "listeners": [{"port": port, "tls": True, "resources": ["client", "federation", "keys"]}],
            "tls_certificate_path": str(cert.cert_path),
            "tls_private_key_path": str(cert.key_path),
            "federation_custom_ca_list": [str(cert.ca_path)],
            "trusted_key_servers": [],
            "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
            **overrides,
        }
        super().__init__(data_dir, engine, dsn, config)
        self.port = port
        self.cert = cert
        self.server_name = self.config.server_name
        self.base_url = f"https://localhost:{port}"

    async def start(self) -> None:
        await self.hs.start()
        app = create_app(self.hs, self.config.listeners[0])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=server_tls_context(self.config)).start()

    def client(self) -> Client:
        """A Client-Server API client that trusts the test CA."""
        c = Client(self.base_url)
        c._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.cert.client_context()))
        return c

    async def user(self, name: str) -> Client:
        c = self.client()
        OPEN_CLIENTS.append(c)
        await c.register(name)
        return c


MakeFederatingServer = Callable[..., Awaitable[FederatingServer]]
# A test module uses these fixtures by importing `make_federating_server_fixture` and
# `test_certificate_fixture` (pytest finds fixtures by their `name`).


@pytest.fixture(scope="session", name="test_certificate")
def test_certificate_fixture(tmp_path_factory: pytest.TempPathFactory) -> TestCertificate:
    return make_test_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(name="make_federating_server")
async def make_federating_server_fixture(tmp_path: Path, request: pytest.FixtureRequest,
                                 test_certificate: TestCertificate) -> AsyncIterator[MakeFederatingServer]:
    """Factory: `await make_federating_server(engine, **config)` -> a started FederatingServer."""
    started: list[FederatingServer] = []

    async def factory(engine: str = "sqlite", **config: Any) -> FederatingServer:
        dsn = None
        if engine == "postgres":
            dsn = await create_database(request.getfixturevalue("pg_base_dsn"))
        srv = FederatingServer(tmp_path / f"fed{len(started)}", engine, dsn, test_certificate, config)
        await srv.start()
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        await srv.stop()
        if srv.dsn:
            await drop_database(srv.dsn)
