"""Node scripts driven by the tests (matrix-js-sdk, matrix-appservice-bridge): their npm dependencies
installed once from the lock file, and the script's marked JSON lines read step by step."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest


def npm_installed(js_dir: Path, package: str) -> Path:
    """`js_dir` with its npm dependencies installed (`npm ci` once, when `package` is missing: the lock
    file pins the versions). Node and npm must be there: a test needing them fails, never skips."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, f"node and npm are needed for the tests driving {package}"
    if not (js_dir / "node_modules" / package / "package.json").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=js_dir, check=True,
                       timeout=600)
    return js_dir


class NodeScript:
    """A Node script as a subprocess: lines starting with `marker` are its JSON reports (`step` names
    each; `error` ends the test), everything else its libraries' log; stdin closed to stop it."""

    def __init__(self, proc: asyncio.subprocess.Process, marker: bytes, name: str,
                 step_timeout_s: float = 30.0) -> None:
        self.proc, self.marker, self.name, self.step_timeout_s = proc, marker, name, step_timeout_s
        self.log: list[str] = []

    async def next(self, step: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), self.step_timeout_s)
            if not line:
                err = await self.proc.stderr.read() if self.proc.stderr else b""
                pytest.fail(f"the {self.name} script ended before {step!r}: "
                            f"{err.decode(errors='replace')[-3000:]}\n{self.log[-30:]}")
            if not line.startswith(self.marker):
                self.log.append(line.decode(errors="replace").rstrip())
                continue
            msg = json.loads(line[len(self.marker):])
            if msg["step"] == "error":
                pytest.fail(f"the {self.name} script reported: {msg['error']}\n{self.log[-30:]}")
            if msg["step"] == step:
                return dict(msg)

    async def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.returncode is None:
            if self.proc.stdin:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
