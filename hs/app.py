"""The aiohttp application factory: mounts the resources a listener names, for this instance's role.

Middlewares give every response the spec's shape: errors as `{errcode, error}`, unknown endpoints as
M_UNRECOGNIZED, CORS headers for web clients, and per-endpoint request metrics. An exception in one
request becomes a 500 for that request only. A long-poll cut short by a server stop is answered as if
its timeout had expired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from hs.api.base import CORS_HEADERS, HS_KEY, Handler, Route, json_response
from hs.config import Listener
from hs.errors import MatrixError
from hs.replication.http_client import REPLICATION_PREFIX
from hs.replication.http_server import REPLICATION_ROUTES, replication_auth
from hs.roles.routes import STREAM_GROUPS, routes_for_instance
from hs.server import HomeServer
from hs.streams.notifier import LongPollInterrupted

logger = logging.getLogger(__name__)

REQUESTS = Counter("hs_http_requests_total", "HTTP requests", ["method", "endpoint", "code"])
LATENCY = Histogram("hs_http_request_seconds", "HTTP request latency", ["method", "endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))



def _wrap(route: Route, forward_to: str | None = None) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Adapt a `(status, json)` handler; with `forward_to`, writes go to that stream writer instead."""
    handler: Handler = route.handler

    async def wrapped(request: web.Request) -> web.StreamResponse:
        if forward_to is not None and request.method not in ("GET", "HEAD"):
            return await _forward(request, forward_to)
        try:
            result = await handler(request)
        except LongPollInterrupted:
            # The server is stopping: answer as if the long-poll's timeout had expired, with the
            # response the handler gives for `timeout=0` (for /sync: a valid one, usually empty).
            result = await handler(request.clone(rel_url=request.rel_url.update_query(timeout="0")))
        if isinstance(result, web.StreamResponse):
            return result
        code, body = result
        return json_response(code, body)

    wrapped.__name__ = getattr(handler, "__name__", "handler")
    return wrapped


async def _forward(request: web.Request, writer: str) -> web.StreamResponse:
    """A write to a stream this instance does not own: the writer handles it, and we answer only once
    we have seen the writer's resulting stream positions (read-your-writes)."""
    hs = request.app[HS_KEY]
    client = hs.replication_client
    status, body, positions = await client.forward(writer, request.method, request.path_qs, await request.read(),
                                                   request.headers.get("Authorization"))
    for stream, position in positions.items():
        await client.wait_for_stream(stream, int(position), writer)
    return web.Response(status=status, body=body, content_type="application/json")


def _stream_writer_for(hs: HomeServer, route: Route) -> str | None:
    """The instance that must handle writes of this route, if it is a stream's and not ours."""
    stream = STREAM_GROUPS.get(route.group)
    if stream is None:
        return None
    writers = getattr(hs.config.stream_writers, stream, ["main"])
    return None if hs.instance_name in writers else writers[0]


@web.middleware
async def matrix_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                            ) -> web.StreamResponse:
    start = time.perf_counter()
    info = request.match_info.route.resource
    endpoint = info.canonical if info is not None else "unknown"
    if request.method == "OPTIONS":
        resp: web.StreamResponse = web.Response(status=204)
    else:
        try:
            resp = await handler(request)
        except MatrixError as e:
            resp = json_response(e.code, e.to_json())
        except web.HTTPRequestEntityTooLarge:
            resp = json_response(413, {"errcode": "M_TOO_LARGE", "error": "Request body too large"})
        except web.HTTPNotFound:
            resp = json_response(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
            endpoint = "unknown"
        except web.HTTPMethodNotAllowed:
            resp = json_response(405, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
        except web.HTTPException as e:
            resp = json_response(e.status, {"errcode": "M_UNKNOWN", "error": e.reason})
        except Exception:
            logger.exception("request %s %s failed", request.method, request.path)
            resp = json_response(500, {"errcode": "M_UNKNOWN", "error": "Internal server error"})
    if not resp.prepared:
        resp.headers.update(CORS_HEADERS)
    REQUESTS.labels(request.method, endpoint, str(resp.status)).inc()
    LATENCY.labels(request.method, endpoint).observe(time.perf_counter() - start)
    return resp


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="OK")


class InFlightRequests:
    """Counts the requests being handled, across an instance's listeners, so that a stop can let them
    finish. (aiohttp's own shutdown stops reading from connections first, so a request whose body is
    still arriving could never complete there.)"""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        self.count += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once no request is being handled; False if some still are after `timeout` seconds."""
        waiter = asyncio.ensure_future(self._idle.wait())
        try:
            done, _ = await asyncio.wait((waiter,), timeout=timeout)
        finally:
            waiter.cancel()
        return bool(done)


def create_app(hs: HomeServer, listener: Listener, in_flight: InFlightRequests | None = None) -> web.Application:
    """An application serving `listener`'s resources with the routes this instance's role owns."""
    middlewares = [matrix_middleware, replication_auth]
    if in_flight is not None:
        middlewares.insert(0, in_flight.middleware)
    app = web.Application(middlewares=middlewares, client_max_size=hs.config.max_request_body_size)
    app[HS_KEY] = hs
    resources = listener.all_resources
    seen: set[tuple[str, str]] = set()
    routes = sorted(routes_for_instance(hs.config, hs.instance_name), key=lambda r: not r.first)
    for route in routes:
        if route.resource not in resources:
            continue
        for path in route.full_paths():
            key = (route.method, path)
            if key in seen:
                continue
            seen.add(key)
            app.router.add_route(route.method, path, _wrap(route, _stream_writer_for(hs, route)))
    if "replication" in resources:
        for method, path, handler in REPLICATION_ROUTES:
            app.router.add_route(method, path, _wrap(Route(method, path, handler, "replication", ())))
        # Client requests forwarded by workers that do not own the stream they write.
        for route in routes:
            if route.group not in STREAM_GROUPS:
                continue
            for path in route.full_paths():
                app.router.add_route(route.method, f"{REPLICATION_PREFIX}/client{path}", _wrap(route))
    if "metrics" in resources:
        app.router.add_get("/_synapse/metrics", _metrics)
        app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    return app
