"""Running one instance: start the HomeServer, serve its listeners, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from hs.app import create_app
from hs.config import HomeserverConfig
from hs.server import HomeServer

logger = logging.getLogger(__name__)


async def start_instance(hs: HomeServer) -> list[web.AppRunner]:
    await hs.start()
    runners = []
    for listener in hs.config.listeners_for(hs.instance_name):
        app = create_app(hs, listener)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        for addr in listener.bind_addresses:
            site = web.TCPSite(runner, addr, listener.port, reuse_address=True)
            await site.start()
            logger.info("%s listening on %s:%d for %s", hs.instance_name, addr, listener.port,
                        sorted(listener.all_resources))
        runners.append(runner)
    return runners


async def run_forever(config: HomeserverConfig, instance: str) -> None:
    hs = HomeServer(config, instance)
    runners = await start_instance(hs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"hs: {instance} of {config.server_name} is running", flush=True)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()
    await hs.stop()
