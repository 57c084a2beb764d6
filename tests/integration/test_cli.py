"""The `hs` command as an admin uses it: generate-config, check-config, run (what `make run` does)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.services import free_port

HS = [sys.executable, "-m", "hs.cli"]


def test_generate_and_check_config(tmp_path: Path) -> None:
    cfg = tmp_path / "homeserver.yaml"
    out = subprocess.run([*HS, "generate-config", "--server-name", "example.org", "-c", str(cfg)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "example.org.signing.key").read_text().startswith("ed25519 a_")
    text = cfg.read_text()
    assert "enable_registration: false" in text
    check = subprocess.run([*HS, "check-config", "-c", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # Refuses to overwrite.
    again = subprocess.run([*HS, "generate-config", "--server-name", "x", "-c", str(cfg)], capture_output=True)
    assert again.returncode == 1


def test_check_config_reports_each_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("server_name: example.org\nenable_registraton: true\nrc_message: {per_second: fast}\n")
    out = subprocess.run([*HS, "check-config", "-c", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert "config error: enable_registraton: unknown key" in lines
    assert any(line.startswith("config error: rc_message.per_second:") for line in lines)


def test_run_serves_versions(tmp_path: Path) -> None:
    cfg = tmp_path / "homeserver.yaml"
    subprocess.run([*HS, "generate-config", "--server-name", "localhost", "-c", str(cfg), "--open-registration"],
                   check=True, capture_output=True)
    port = free_port()
    cfg.write_text(cfg.read_text().replace("port: 8008", f"port: {port}").replace("port: 9000", f"port: {free_port()}"))
    proc = subprocess.Popen([*HS, "run", "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_matrix/client/versions", timeout=1) as r:
                    body = r.read()
                break
            except OSError:
                time.sleep(0.1)
        assert body is not None and b"versions" in body
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_generate_config_on_another_port_and_register_user_finds_the_server(tmp_path: Path) -> None:
    """`make run PORT=…`'s generate-config: the client listener on that port, metrics 992 above it;
    `hs register-user` then reaches the server through the config's own listener (no --url)."""
    cfg = tmp_path / "homeserver.yaml"
    port = free_port()
    out = subprocess.run([*HS, "generate-config", "--server-name", "localhost", "-c", str(cfg), "--port", str(port),
                          "--metrics-port", str(free_port())], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = cfg.read_text()
    assert f"port: {port}\n" in text and f'public_baseurl: "http://localhost:{port}/"' in text
    default = tmp_path / "default.yaml"
    subprocess.run([*HS, "generate-config", "--server-name", "localhost", "-c", str(default), "--port", "8018"],
                   check=True, capture_output=True)
    assert "port: 8018\n" in default.read_text() and "port: 9010\n" in default.read_text()
    proc = subprocess.Popen([*HS, "run", "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_matrix/client/versions", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        reg = subprocess.run([*HS, "register-user", "-c", str(cfg), "-u", "operator", "-p", "a-long-password-1",
                              "--admin"], capture_output=True, text=True, timeout=30)
        assert reg.returncode == 0, reg.stderr
        assert "registered @operator:localhost" in reg.stdout
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_generate_keys_writes_what_the_config_names(tmp_path: Path) -> None:
    """A compose stack's first run: the signing key and the secret files the config names by path are
    written where missing (0600), and kept as they are on a second run."""
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("server_name: example.org\nsigning_key_path: keys/example.org.signing.key\n"
                   "registration_shared_secret_path: keys/registration_secret\n"
                   "worker_replication_secret_path: keys/replication_secret\n")
    out = subprocess.run([*HS, "generate-keys", "-c", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    key = tmp_path / "keys" / "example.org.signing.key"
    secret = tmp_path / "keys" / "replication_secret"
    assert key.read_text().startswith("ed25519 a_")
    assert len(secret.read_text().strip()) >= 40 and (secret.stat().st_mode & 0o777) == 0o600
    before = (key.read_text(), secret.read_text(), (tmp_path / "keys" / "registration_secret").read_text())
    again = subprocess.run([*HS, "generate-keys", "-c", str(cfg)], capture_output=True, text=True)
    assert again.returncode == 0 and "exists already" in again.stdout
    assert before == (key.read_text(), secret.read_text(), (tmp_path / "keys" / "registration_secret").read_text())
    check = subprocess.run([*HS, "check-config", "-c", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
