"""Run one federating hs (tests/federation/hs_server.py's FederatingHs) in a process of its own, for
bench/bench_federation.py: the benchmark's fake servers and clients then do not share hs's event
loop (Synapse runs in its own process too), and hs runs on uvloop as `hs run` does.

    python bench/fed_hs_proc.py DATA_DIR DSN CERT KEY CA

Prints one JSON line (server_name, base_url, port) once it answers, then runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.federation.hs_server import FederatingHs  # noqa: E402
from tests.federation.tls import ServerCert  # noqa: E402


async def serve(data_dir: Path, dsn: str, cert: ServerCert) -> None:
    # Raise the limits the test harness leaves at 1000/s: the benchmark sends faster than that.
    open_limits = {"per_second": 100000, "burst_count": 100000}
    overrides = {"rc_message": open_limits, "rc_joins": {"local": open_limits, "remote": open_limits}}
    server = FederatingHs(data_dir, "postgres", dsn, cert, overrides)
    await server.start()
    print(json.dumps({"server_name": server.server_name, "base_url": server.base_url, "port": server.port}),
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main() -> None:
    data_dir, dsn, cert_path, key_path, ca_path = sys.argv[1:6]
    logging.basicConfig(level=logging.WARNING)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(Path(data_dir), dsn, ServerCert(Path(cert_path), Path(key_path), Path(ca_path))))


if __name__ == "__main__":
    main()
