"""A real Synapse for federation tests: installed once into its own cached virtualenv, then run as a
subprocess with TLS on loopback, on a throwaway PostgreSQL database.

Synapse is never skipped: when its virtualenv is missing it is installed (a minute or two on a fresh
machine or in CI), under a file lock so that concurrent pytest processes install it once, and marked
complete only after the install succeeded, so an interrupted install is redone rather than trusted.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.federation.client import MatrixClient, TlsClient
from tests.federation.tls import ServerCert
from tests.services import free_port

logger = logging.getLogger(__name__)

SYNAPSE_VERSION = "1.163.2"
SYNAPSE_REQUIREMENT = f"matrix-synapse[postgres]=={SYNAPSE_VERSION}"
SHARED_SECRET = "synapse-test-shared-secret"
# Startup runs Synapse's schema migrations on an empty database: ~10-20 s on this size of machine.
START_TIMEOUT_S = 180.0
STOP_GRACE_S = 5.0

WIDE_OPEN = {"per_second": 10000, "burst_count": 10000}


def venv_dir() -> Path:
    env = os.environ.get("HS_SYNAPSE_VENV")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "hs-tests" / "synapse-venv"


def _marker(venv: Path) -> Path:
    # The marker names the requirement: bumping SYNAPSE_VERSION reinstalls.
    return venv / f".installed-{SYNAPSE_REQUIREMENT.replace('/', '_')}"


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _log(msg: str) -> None:
    # pytest captures stdout of fixtures; stderr of a session fixture shows with -s, and the logger
    # record shows on failure. Both, so a slow first run is explained either way.
    logger.info(msg)
    print(f"[synapse-venv] {msg}", file=sys.stderr, flush=True)


def ensure_synapse(venv: Path | None = None) -> Path:
    """The Python of a virtualenv with Synapse installed, installing it first when needed.

    Safe when several processes race (an exclusive file lock beside the venv) and idempotent (a
    marker written only after pip succeeded). Returns the venv's python executable.
    """
    venv = venv or venv_dir()
    marker = _marker(venv)
    if marker.exists():
        return _python(venv)
    with _file_lock(venv.parent / (venv.name + ".lock")):
        if marker.exists():  # another process finished it while we waited for the lock
            return _python(venv)
        began = time.monotonic()
        if venv.exists():
            _log(f"removing incomplete Synapse virtualenv {venv}")
            shutil.rmtree(venv)
        _log(f"creating Synapse virtualenv {venv} ({SYNAPSE_REQUIREMENT}); this takes a minute or two")
        base_python = shutil.which("python3") or sys.executable
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
        pip = [str(_python(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "--upgrade", "pip", "wheel", "setuptools"], check=True)
        subprocess.run([*pip, SYNAPSE_REQUIREMENT], check=True)
        subprocess.run([str(_python(venv)), "-c", "import synapse, psycopg2"], check=True)
        marker.write_text(f"{SYNAPSE_REQUIREMENT}\ninstalled in {time.monotonic() - began:.1f}s\n")
        _log(f"Synapse {SYNAPSE_VERSION} installed in {time.monotonic() - began:.1f}s")
    return _python(venv)


async def create_synapse_database(base_dsn: str) -> str:
    """A fresh database Synapse accepts whatever the server's defaults: UTF8 with C collation (a
    throwaway `initdb` under a POSIX locale would otherwise give SQL_ASCII, which Synapse refuses).
    Drop it with tests.services.drop_database."""
    from tests.services import create_database

    return await create_database(base_dsn, "synapse_test_",
                                 "ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")


class SynapseServer:
    """One Synapse homeserver: `server_name` is `localhost:<port>`, one TLS listener serving client and
    federation on that port, a fresh PostgreSQL database, the test CA trusted for outbound federation
    and loopback allowed as a federation destination."""

    def __init__(self, python: Path, data_dir: Path, dsn: str, cert: ServerCert,
                 overrides: dict[str, Any] | None = None) -> None:
        self.python = python
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dsn = dsn
        self.cert = cert
        self.port = free_port()
        self.server_name = f"localhost:{self.port}"
        self.base_url = f"https://localhost:{self.port}"
        self.config_path = self.dir / "homeserver.yaml"
        self.log_path = self.dir / "homeserver.log"
        self.stdout_path = self.dir / "stdout.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self._overrides = overrides or {}
        self._write_config()

    # -- configuration ---------------------------------------------------------------------------

    def _database(self) -> dict[str, Any]:
        # postgresql://user[:password]@host:port/dbname as made by tests.services.create_database.
        rest = self.dsn.split("://", 1)[1]
        creds, hostpart = rest.rsplit("@", 1)
        user, _, password = creds.partition(":")
        hostport, database = hostpart.split("/", 1)
        host, _, port = hostport.partition(":")
        args: dict[str, Any] = {"user": user, "database": database, "host": host, "port": int(port or 5432),
                                "cp_min": 1, "cp_max": 5}
        if password:
            args["password"] = password
        return {"name": "psycopg2", "allow_unsafe_locale": True, "args": args}

    def _config(self) -> dict[str, Any]:
        rate_limits: dict[str, Any] = {
            "rc_message": WIDE_OPEN,
            "rc_registration": WIDE_OPEN,
            "rc_registration_token_validity": WIDE_OPEN,
            "rc_login": {"address": WIDE_OPEN, "account": WIDE_OPEN, "failed_attempts": WIDE_OPEN},
            "rc_admin_redaction": WIDE_OPEN,
            "rc_joins": {"local": WIDE_OPEN, "remote": WIDE_OPEN},
            "rc_joins_per_room": WIDE_OPEN,
            "rc_3pid_validation": WIDE_OPEN,
            "rc_invites": {"per_room": WIDE_OPEN, "per_user": WIDE_OPEN, "per_issuer": WIDE_OPEN},
            "rc_third_party_invite": WIDE_OPEN,
            "rc_media_create": WIDE_OPEN,
            "rc_presence": {"per_user": WIDE_OPEN},
            "rc_delayed_event_mgmt": WIDE_OPEN,
            "rc_reports": WIDE_OPEN,
            "rc_room_creation": WIDE_OPEN,
            "rc_federation": {"window_size": 1000, "sleep_limit": 10000, "sleep_delay": 1,
                              "reject_limit": 10000, "concurrent": 100},
        }
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "public_baseurl": self.base_url + "/",
            "pid_file": str(self.dir / "homeserver.pid"),
            "listeners": [{
                "port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": True,
                "x_forwarded": False, "resources": [{"names": ["client", "federation"], "compress": False}],
            }],
            "tls_certificate_path": str(self.cert.cert_path),
            "tls_private_key_path": str(self.cert.key_path),
            "federation_custom_ca_list": [str(self.cert.ca_path)],
            "federation_verify_certificates": True,
            # Synapse refuses private/loopback destinations by default (outbound federation, key
            # fetches, URL previews); the whitelist lets it reach the other test servers.
            # (Synapse's older federation_ip_range_* names were merged into ip_range_*.) Outbound
            # federation is sent by the main process: federation_sender_instances is left unset.
            "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "allow_public_rooms_over_federation": True,
            "allow_public_rooms_without_auth": True,
            "database": self._database(),
            "log_config": str(self.dir / "log.yaml"),
            "media_store_path": str(self.dir / "media"),
            "signing_key_path": str(self.dir / "signing.key"),
            "report_stats": False,
            "enable_registration": False,
            "registration_shared_secret": SHARED_SECRET,
            "macaroon_secret_key": "macaroon-" + self.server_name,
            "form_secret": "form-" + self.server_name,
            "bcrypt_rounds": 4,
            "enable_metrics": False,
            "presence": {"enabled": True},
            "url_preview_enabled": False,
            "user_directory": {"enabled": True, "search_all_users": True},
            "caches": {"global_factor": 0.5},
            **rate_limits,
        }
        config.update(self._overrides)
        return config

    def _write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self._config(), sort_keys=False))
        (self.dir / "log.yaml").write_text(yaml.safe_dump({
            "version": 1,
            "formatters": {"precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}},
            "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}},
            "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                                  "filename": str(self.log_path), "filters": ["context"], "encoding": "utf8"}},
            "loggers": {"synapse.storage.SQL": {"level": "WARNING"},
                        "synapse.access": {"level": "INFO"}},
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }, sort_keys=False))

    def _generate_keys(self) -> None:
        subprocess.run([str(self.python), "-m", "synapse.app.homeserver", "--config-path", str(self.config_path),
                        "--generate-keys"], check=True, cwd=self.dir, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)

    # -- lifecycle -------------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert.ca_path))

    def _version_answers(self) -> bool:
        url = self.base_url + "/_matrix/federation/v1/version"
        try:
            with urllib.request.urlopen(url, timeout=2, context=self.ssl_context()) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def start(self) -> None:
        """Start Synapse and wait until its federation /version answers over TLS with the test CA."""
        began = time.monotonic()
        if not (self.dir / "signing.key").exists():
            self._generate_keys()
        env = {**os.environ, "SYNAPSE_ASYNC_IO_REACTOR": "0", "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)
        with open(self.stdout_path, "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.python), "-m", "synapse.app.homeserver", "--config-path", str(self.config_path)],
                cwd=self.dir, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = began + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Synapse exited with {self.proc.returncode} while starting:\n"
                                   f"{self.stdout_tail(40)}\n{self.log_tail(40)}")
            if self._version_answers():
                self.startup_seconds = time.monotonic() - began
                _log(f"Synapse {self.server_name} up in {self.startup_seconds:.1f}s")
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Synapse did not answer within {START_TIMEOUT_S:.0f}s:\n{self.log_tail(40)}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a few seconds: tests do not wait for a graceful drain."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    # -- helpers for tests -----------------------------------------------------------------------

    def _tail(self, path: Path, n: int) -> str:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"({path.name}: no file)"
        return "\n".join(lines[-n:])

    def log_tail(self, n: int = 50) -> str:
        """The last `n` lines of Synapse's log (INFO and above), for a failing test's message."""
        return self._tail(self.log_path, n)

    def stdout_tail(self, n: int = 50) -> str:
        return self._tail(self.stdout_path, n)

    def client(self, token: str | None = None) -> MatrixClient:
        return TlsClient(self.base_url, self.cert.ca_path, token)

    async def register_user(self, localpart: str, password: str = "password123",
                            admin: bool = False) -> tuple[str, str]:
        """Register through the shared-secret admin API; returns (user_id, access_token)."""
        return await shared_secret_register(self.client(), SHARED_SECRET, localpart, password, admin)


async def shared_secret_register(c: MatrixClient, secret: str, localpart: str, password: str,
                                 admin: bool) -> tuple[str, str]:
    """`/_synapse/admin/v1/register`: fetch a nonce, answer with the HMAC-SHA1 of
    nonce NUL user NUL password NUL admin|notadmin keyed by the shared secret."""
    async with c:
        status, data = await c.request("GET", "/_synapse/admin/v1/register")
        assert status == 200, (status, data)
        nonce = data["nonce"]
        mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(),
                                 b"admin" if admin else b"notadmin"]))
        body = {"nonce": nonce, "username": localpart, "password": password, "admin": admin,
                "mac": mac.hexdigest()}
        status, data = await c.request("POST", "/_synapse/admin/v1/register", body)
        assert status == 200, (status, data)
        return str(data["user_id"]), str(data["access_token"])


if __name__ == "__main__":  # `python -m tests.federation.synapse`: install ahead of a test run
    logging.basicConfig(level=logging.INFO)
    print(ensure_synapse())
