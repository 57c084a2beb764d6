"""The HomeServer starts step by step and registers each step's teardown as it goes: a step that fails
undoes what had started, in reverse, and leaves the process able to start again; `stop` is the same
unwinding, last step first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hs.config import parse_config
from hs.events.signing import SigningKey
from hs.server import HomeServer


def _config(tmp_path: Path) -> Any:
    return parse_config({"server_name": "test.local", "listeners": [{"port": 0, "resources": ["client"]}],
                         "database": {"engine": "sqlite", "path": str(tmp_path / "hs.db")}},
                        config_dir=str(tmp_path))


async def test_a_failed_start_undoes_what_had_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hs = HomeServer(_config(tmp_path), "main", signing_key=SigningKey.generate())
    order: list[str] = []
    for name, stream in hs.streams.items():
        real_close = stream.close

        async def close(real_close: Any = real_close, name: str = name) -> None:
            order.append(f"close {name}")
            await real_close()

        monkeypatch.setattr(stream, "close", close)
    real_db_close = hs.db.close

    async def db_close() -> None:
        order.append("close database")
        await real_db_close()

    monkeypatch.setattr(hs.db, "close", db_close)

    async def failing_presence_start() -> None:
        raise RuntimeError("presence could not start")

    monkeypatch.setattr(hs.presence, "start", failing_presence_start)
    with pytest.raises(RuntimeError, match="presence could not start"):
        await hs.start()
    # Every stream that was set up is closed, last first, then the database.
    assert order == [f"close {name}" for name in reversed(list(hs.streams))] + ["close database"]
    with pytest.raises(Exception):  # noqa: B017 - the pool is closed: any use fails
        await hs.db.fetchval("SELECT 1")

    # Nothing was left half-done in the database: a new HomeServer on it starts cleanly, and stops.
    monkeypatch.undo()
    hs2 = HomeServer(_config(tmp_path), "main", signing_key=SigningKey.generate())
    await hs2.start()
    assert await hs2.db.fetchval("SELECT 1") == 1
    await hs2.stop()
    await hs2.stop()  # a second stop has nothing left to undo
