"""Running one instance: start the HomeServer, serve its listeners, stop quickly and cleanly on
SIGTERM/SIGINT.

A stop (1) answers every waiting long-poll at once, as if its timeout had expired, (2) closes the
listening sockets and lets the requests being handled finish, for up to DRAIN_TIMEOUT_S (a write
that was acknowledged is committed; one cut off was not acknowledged, and its client retries it with
the same transaction ID), (3) closes the connections, then (4) stops the HomeServer, which completes
the event batches still being persisted.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl

from aiohttp import web

from hs.app import InFlightRequests, create_app
from hs.config import HomeserverConfig
from hs.pidfile import PidFile
from hs.server import HomeServer

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long the requests being handled at a stop may take to finish. Long-polls are answered at once,
# so this only bounds writes (normally milliseconds) and requests whose bodies are still arriving.
DRAIN_TIMEOUT_S = 1.0
# Then aiohttp's own shutdown, for requests still running: it waits up to this, cancels them, and
# waits up to this again.
CANCEL_TIMEOUT_S = 0.2


def server_tls_context(config: HomeserverConfig) -> ssl.SSLContext:
    """The TLS context of `tls: true` listeners (federation's port 8448): the configured certificate
    chain and key, TLS 1.2 at least."""
    assert config.tls_certificate_path and config.tls_private_key_path  # checked by the config
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.resolve_path(config.tls_certificate_path),
                            config.resolve_path(config.tls_private_key_path))
    return context


class Instance:
    """A started HomeServer and the aiohttp runners serving its listeners."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.in_flight = InFlightRequests()
        self.runners: list[web.AppRunner] = []

    async def start(self) -> None:
        hs = self.hs
        await hs.start()
        tls_context: ssl.SSLContext | None = None
        for listener in hs.config.listeners_for(hs.instance_name):
            if listener.tls and tls_context is None:
                tls_context = server_tls_context(hs.config)
            app = create_app(hs, listener, self.in_flight)
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=CANCEL_TIMEOUT_S)
            await runner.setup()
            self.runners.append(runner)
            for addr in listener.bind_addresses:
                site = web.TCPSite(runner, addr, listener.port, reuse_address=True,
                                   ssl_context=tls_context if listener.tls else None)
                await site.start()
                logger.info("%s listening on %s:%d for %s", hs.instance_name, addr, listener.port,
                            sorted(listener.all_resources))

    async def stop(self) -> None:
        """Answer the long-polls, stop listening, let requests in flight finish, then stop the HomeServer."""
        self.hs.notifier.interrupt_long_polls()
        for runner in self.runners:
            for site in list(runner.sites):
                await site.stop()
        if not await self.in_flight.wait_idle(DRAIN_TIMEOUT_S):
            logger.warning("%s: %d request(s) still running after %.1fs; cancelling them",
                           self.hs.instance_name, self.in_flight.count, DRAIN_TIMEOUT_S)
        await asyncio.gather(*(runner.cleanup() for runner in self.runners))
        await self.hs.stop()

    async def abort(self) -> None:
        """Stop an instance whose start was interrupted (whatever it had started)."""
        try:
            await asyncio.gather(*(runner.cleanup() for runner in self.runners))
            await self.hs.stop()
        except Exception:
            logger.exception("%s: stopping during start-up", self.hs.instance_name)


async def run_forever(config: HomeserverConfig, instance_name: str) -> None:
    # The signal mask survives fork and exec: a parent that blocked these (as `hs local-cluster` once
    # did around its own sigwait) would leave us deaf to SIGTERM. Whatever our parent did, a stop
    # signal stops us.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    # Synapse's `pid_file` is the main process's; its workers name their own (`worker_pid_file`).
    pid_file = PidFile(config.resolve_path(config.pid_file)) if config.pid_file and instance_name == "main" else None
    if pid_file is not None:
        pid_file.acquire()
    try:
        instance = Instance(HomeServer(config, instance_name))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.ensure_future(instance.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped while starting, e.g. a worker waiting for main's migrations
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await instance.abort()
            return
        if starting.exception() is not None:
            stopping.cancel()
        starting.result()
        print(f"hs: {instance_name} of {config.server_name} is running", flush=True)
        await stopping
        began = loop.time()
        await instance.stop()
        logger.info("%s stopped in %.2fs", instance_name, loop.time() - began)
    finally:
        if pid_file is not None:
            pid_file.release()
