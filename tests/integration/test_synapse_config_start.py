"""A stock Synapse config starts hs (issue 17 part 2): the file `python -m synapse.app.homeserver
--generate-config` writes (Synapse from PyPI, in the cached virtualenv tests/federation/synapse.py
installs), given to `hs run` with only its port changed, answers /versions; its Synapse log config is
honoured, and a log config of JSON lines with per-logger levels (its file named per instance) is too."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.federation.synapse import ensure_synapse
from tests.services import free_port

HS = [sys.executable, "-m", "hs.cli"]


@pytest.fixture(scope="module")
def synapse_python() -> Path:
    return ensure_synapse()


def generate_synapse_config(python: Path, directory: Path) -> tuple[Path, int]:
    """Synapse's own generated homeserver.yaml (with its log config and signing key) in `directory`,
    its listener moved to a free port; returns the file and the port."""
    config = directory / "homeserver.yaml"
    subprocess.run([str(python), "-m", "synapse.app.homeserver", "--generate-config", "--server-name",
                    "example.org", "--config-path", str(config), "--report-stats=no"],
                   cwd=directory, check=True, capture_output=True, timeout=120)
    text = config.read_text()
    assert "port: 8008" in text and "name: sqlite3" in text and "log_config:" in text
    port = free_port()
    config.write_text(text.replace("port: 8008", f"port: {port}"))
    return config, port


def serve_versions(config: Path, port: int) -> tuple[bytes, str]:
    """Start `hs run` on the config, read /versions, stop it cleanly; returns the body and stderr."""
    proc = subprocess.Popen([*HS, "run", "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    body = None
    try:
        for _ in range(150):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_matrix/client/versions", timeout=1) as r:
                    body = r.read()
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert body is not None, err.decode()
    assert proc.returncode == 0, err.decode()
    return body, err.decode()


def test_stock_synapse_config_starts_hs(synapse_python: Path, tmp_path: Path) -> None:
    config, port = generate_synapse_config(synapse_python, tmp_path)
    check = subprocess.run([*HS, "check-config", "-c", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "notice: Synapse option `report_stats` has no effect on hs" in check.stdout
    assert "config OK: example.org, 0 worker(s), database sqlite" in check.stdout

    body, _ = serve_versions(config, port)
    assert "versions" in json.loads(body)
    # Synapse's database path was used, and Synapse's log config (its buffering handler, its
    # `%(request)s` format) wrote the log file it names, with the notice in it.
    assert (tmp_path / "homeserver.db").exists()
    log = (tmp_path / "homeserver.log").read_text()
    assert " - hs.config - " in log and "Synapse option `report_stats` has no effect on hs" in log
    assert "listening on 127.0.0.1:" in log


def test_log_config_json_lines_with_per_logger_levels(synapse_python: Path, tmp_path: Path) -> None:
    config, port = generate_synapse_config(synapse_python, tmp_path)
    json_log = tmp_path / "hs-main.jsonl"
    log_config = tmp_path / "json.log.config"
    log_config.write_text(f"""\
version: 1
formatters:
  json:
    class: hs.logging_setup.JsonFormatter
handlers:
  file:
    class: logging.FileHandler
    filename: {tmp_path / "hs-{instance}.jsonl"}
    formatter: json
loggers:
  hs.runner: {{level: WARNING}}
  hs.db.migrations: {{level: DEBUG}}
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
""")
    text = config.read_text()
    # Relative to the config file; and a Synapse feature hs lacks, whose notice is a warning.
    config.write_text(text.replace(str(tmp_path / "example.org.log.config"), "json.log.config")
                      + "\nemail:\n  smtp_host: localhost\n")
    serve_versions(config, port)

    records = [json.loads(line) for line in json_log.read_text().splitlines()]
    assert records and all({"log", "namespace", "level", "time"} <= set(r) for r in records)
    assert all(r.get("instance") == "main" for r in records)
    namespaces = {r["namespace"] for r in records}
    assert "hs.config" in namespaces and "hs.db.migrations" in namespaces
    # hs.runner is at WARNING: its INFO lines ("listening on ...") are not written.
    assert not [r for r in records if r["namespace"] == "hs.runner" and r["level"] == "INFO"]
    assert any(r["log"].startswith("Synapse option `report_stats`") and r["level"] == "INFO" for r in records)
    assert any(r["log"].startswith("Synapse option `email` is not supported by hs") and r["level"] == "WARNING"
               for r in records)


def test_bad_log_config_is_refused_by_name(synapse_python: Path, tmp_path: Path) -> None:
    config, _ = generate_synapse_config(synapse_python, tmp_path)
    (tmp_path / "bad.log.config").write_text("version: 1\nhandlers:\n  x: {class: synapse.logging.RemoteHandler}\n")
    config.write_text(config.read_text().replace(str(tmp_path / "example.org.log.config"), "bad.log.config"))
    check = subprocess.run([*HS, "check-config", "-c", str(config)], capture_output=True, text=True)
    assert check.returncode == 1
    assert (f"config error: log_config: {tmp_path / 'bad.log.config'}: handlers.x.class: Synapse's "
            "`synapse.logging.RemoteHandler` has no counterpart in hs") in check.stderr
