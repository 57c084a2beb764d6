"""Calls from the homeserver to application services (the application service API's endpoints on the
service's side, under `{url}/_matrix/app/v1`).

Every call carries `Authorization: Bearer <hs_token>` (and, with `legacy_auth`, the `access_token` query
parameter too: what Synapse sends with `use_appservice_legacy_authorization`, for services older than
spec v1.4). Calls are bounded: a total timeout, and responses read up to MAX_RESPONSE_BYTES (a service
answers transactions and queries with `{}` or small lists; a larger answer is a broken service).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from prometheus_client import Counter

from hs.appservice.registration import ApplicationService

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
APP_PREFIX = "/_matrix/app/v1"
MAX_RESPONSE_BYTES = 1 << 20
# The body of a bad answer kept for the ping's error (the spec's `body`).
MAX_ERROR_BODY_CHARS = 1000
TIMEOUT_S = 60.0  # Synapse's HTTP client timeout
PROTOCOL_CACHE_S = 3600.0  # a protocol's metadata is asked again after this long (as Synapse)

TRANSACTIONS = Counter("hs_appservice_transactions_total", "Transactions to application services", ["outcome"])
EVENTS_SENT = Counter("hs_appservice_events_sent_total", "Events delivered to application services")


def legacy_authorization(hs: Any) -> bool:
    """Synapse's `use_appservice_legacy_authorization` (off by default): the hs_token in the query string
    too. Read if the config has the key (it is not one of hs's config keys yet)."""
    return bool(getattr(hs.config, "use_appservice_legacy_authorization", False))


class AppServiceCallError(Exception):
    """A call to a service failed: `kind` is "timeout", "connection" or "status" (then with the
    service's `status` and the start of its `body`)."""

    def __init__(self, kind: str, message: str, status: int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.body = body


def _valid_3pe_result(r: Any, field: str) -> bool:
    """A third-party user or location as the spec shapes it (Synapse drops the others)."""
    return (isinstance(r, dict) and all(isinstance(r.get(k), str) for k in (field, "protocol"))
            and isinstance(r.get("fields"), dict))


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes | None:
    """The answer's body, or None when it is longer than MAX_RESPONSE_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class AppServiceApi:
    def __init__(self, legacy_auth: bool = False, timeout_s: float = TIMEOUT_S) -> None:
        self.legacy_auth = legacy_auth
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._protocols: dict[tuple[str, str], tuple[float, JsonDict]] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session

    async def _call(self, service: ApplicationService, method: str, path: str, *,
                    query: list[tuple[str, str]] | None = None, body: Any = None,
                    timeout_s: float | None = None) -> Any:
        """One call; the decoded JSON answer (None when it is not JSON), or AppServiceCallError."""
        assert service.url is not None
        params = list(query or [])
        if self.legacy_auth:
            params.append(("access_token", service.hs_token))
        headers = {"Authorization": f"Bearer {service.hs_token}"}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        url = service.url.rstrip("/") + APP_PREFIX + path
        try:
            async with self._client().request(
                    method, url, params=params or None, data=data, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)) as resp:
                raw = await _read_bounded(resp)
                if raw is None:
                    raise AppServiceCallError("status", f"{method} {path}: answer larger than {MAX_RESPONSE_BYTES}"
                                              " bytes", resp.status, None)
                if resp.status >= 300:
                    text = raw.decode("utf-8", "replace")[:MAX_ERROR_BODY_CHARS]
                    raise AppServiceCallError("status", f"{method} {path} returned status {resp.status}",
                                              resp.status, text)
        except TimeoutError:
            raise AppServiceCallError("timeout", f"{method} {path} timed out") from None
        except aiohttp.ClientError as e:
            raise AppServiceCallError("connection", f"{method} {path} failed: {e}") from None
        try:
            return orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            return None

    # -- transactions ------------------------------------------------------------------------------------
    @staticmethod
    def transaction_body(service: ApplicationService, events: list[JsonDict], extra: JsonDict) -> JsonDict:
        """The PUT /transactions body: events, and what the service asked for in its registration —
        MSC2409 ephemeral events and to-device messages (both the stable and the unstable keys), MSC3202
        device lists and one-time / fallback key counts (the counts under both names Synapse uses)."""
        body: JsonDict = {"events": events}
        if service.receive_ephemeral:
            ephemeral = extra.get("ephemeral") or []
            body["ephemeral"] = ephemeral
            body["de.sorunome.msc2409.ephemeral"] = ephemeral
            body["de.sorunome.msc2409.to_device"] = extra.get("to_device") or []
        if service.msc3202:
            otks = extra.get("otk_counts")
            if otks:
                body["org.matrix.msc3202.device_one_time_key_counts"] = otks
                body["org.matrix.msc3202.device_one_time_keys_count"] = otks
            if extra.get("fallback_keys"):
                body["org.matrix.msc3202.device_unused_fallback_key_types"] = extra["fallback_keys"]
            lists = extra.get("device_lists")
            if lists and (lists.get("changed") or lists.get("left")):
                body["org.matrix.msc3202.device_lists"] = {"changed": lists.get("changed") or [],
                                                           "left": lists.get("left") or []}
        return body

    async def push(self, service: ApplicationService, txn_id: int | str, body: JsonDict) -> bool:
        """PUT /transactions/{txnId}: True once the service has acknowledged it (2xx)."""
        if service.url is None:
            return True
        try:
            await self._call(service, "PUT", f"/transactions/{quote(str(txn_id), safe='')}", body=body)
        except AppServiceCallError as e:
            TRANSACTIONS.labels("failed").inc()
            logger.info("appservice %s: transaction %s failed: %s", service.id, txn_id, e)
            return False
        TRANSACTIONS.labels("sent").inc()
        EVENTS_SENT.inc(len(body.get("events") or ()))
        return True

    # -- ping ----------------------------------------------------------------------------------------------
    async def ping(self, service: ApplicationService, txn_id: str | None) -> int:
        """POST /ping; the round trip in milliseconds, or AppServiceCallError."""
        started = time.monotonic()
        await self._call(service, "POST", "/ping", body={} if txn_id is None else {"transaction_id": txn_id})
        return int((time.monotonic() - started) * 1000)

    # -- queries -------------------------------------------------------------------------------------------
    async def query_user(self, service: ApplicationService, user_id: str) -> bool:
        """GET /users/{userId}: whether the service says it has created the user."""
        return await self._query(service, f"/users/{quote(user_id, safe='')}")

    async def query_alias(self, service: ApplicationService, alias: str) -> bool:
        """GET /rooms/{alias}: whether the service says it has created the alias's room."""
        return await self._query(service, f"/rooms/{quote(alias, safe='')}")

    async def _query(self, service: ApplicationService, path: str) -> bool:
        if service.url is None:
            return False
        try:
            await self._call(service, "GET", path)
        except AppServiceCallError as e:
            if e.status != 404:
                logger.warning("appservice %s: query %s failed: %s", service.id, path, e)
            return False
        return True

    # -- third-party networks ----------------------------------------------------------------------------
    async def get_protocol(self, service: ApplicationService, protocol: str) -> JsonDict | None:
        """GET /thirdparty/protocol/{protocol}, cached an hour; each instance with a network_id gets the
        `instance_id` clients give back in room directory queries (`<service id>|<network id>`, as
        Synapse names it)."""
        if service.url is None:
            return None
        key = (service.id, protocol)
        cached = self._protocols.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < PROTOCOL_CACHE_S:
            return cached[1]
        try:
            info = await self._call(service, "GET", f"/thirdparty/protocol/{quote(protocol, safe='')}")
        except AppServiceCallError as e:
            logger.warning("appservice %s: protocol %s lookup failed: %s", service.id, protocol, e)
            return None
        if not isinstance(info, dict) or not isinstance(info.get("instances"), list):
            logger.warning("appservice %s: protocol %s: not a valid answer", service.id, protocol)
            return None
        for instance in info["instances"]:
            if isinstance(instance, dict) and instance.get("network_id") is not None:
                instance["instance_id"] = f"{service.id}|{instance['network_id']}"
        if len(self._protocols) > 1000:
            self._protocols.clear()
        self._protocols[key] = (now, info)
        return info

    async def query_3pe(self, service: ApplicationService, kind: str, protocol: str | None,
                        fields: list[tuple[str, str]]) -> list[JsonDict]:
        """GET /thirdparty/{user|location}[/{protocol}]: the service's valid results (nothing when it
        fails or answers something else than a list)."""
        if service.url is None:
            return []
        field = "userid" if kind == "user" else "alias"
        path = f"/thirdparty/{kind}" + (f"/{quote(protocol, safe='')}" if protocol is not None else "")
        try:
            answer = await self._call(service, "GET", path, query=fields)
        except AppServiceCallError as e:
            logger.warning("appservice %s: third-party %s lookup failed: %s", service.id, kind, e)
            return []
        if not isinstance(answer, list):
            return []
        return [r for r in answer if _valid_3pe_result(r, field)]

    async def gather(self, calls: list[Any]) -> list[Any]:
        """Calls to several services at once; a call that raised counts as nothing."""
        results = await asyncio.gather(*calls, return_exceptions=True)
        return [None if isinstance(r, BaseException) else r for r in results]
