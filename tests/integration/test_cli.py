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
