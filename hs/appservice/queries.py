"""What clients ask of application services through the homeserver: user and alias queries (a service
may create a namespaced user or room on demand), third-party network lookups, and pings.

Any process may ask (these are plain HTTP calls to the services); the transactions are the
`appservice_notifier` duty's (hs/appservice/sender.py). Reached through `appservice_queries(hs)`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hs.appservice.api import AppServiceApi, AppServiceCallError, legacy_authorization
from hs.appservice.registration import ApplicationService
from hs.errors import bad_status, connection_failed, connection_timeout, forbidden, not_found, url_not_set

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

class AppServiceQueries:
    def __init__(self, hs: HomeServer, api: AppServiceApi | None = None) -> None:
        self.hs = hs
        self.api = api or AppServiceApi(legacy_auth=legacy_authorization(hs))
        self.services: list[ApplicationService] = list(hs.config.app_services)
        self._by_id = {s.id: s for s in self.services}
        self._by_token = {s.as_token: s for s in self.services}

    async def close(self) -> None:
        await self.api.close()

    def by_id(self, as_id: str) -> ApplicationService | None:
        return self._by_id.get(as_id)

    def by_as_token(self, token: str) -> ApplicationService | None:
        return self._by_token.get(token)

    # -- users and aliases ---------------------------------------------------------------------------------
    async def query_user(self, user_id: str) -> bool:
        """Ask the services whose user namespace has this (unknown) user whether it exists: True when one
        answered yes (it has registered the user meanwhile: look it up again)."""
        for service in self.services:
            if service.url is not None and service.is_interested_in_user(user_id):
                if await self.api.query_user(service, user_id):
                    return True
        return False

    async def query_alias(self, alias: str) -> bool:
        """Ask the services whose alias namespace has this (unknown) alias: True when one answered yes
        (it has created the room and the alias meanwhile: resolve it again)."""
        for service in self.services:
            if service.url is not None and service.is_interested_in_alias(alias):
                if await self.api.query_alias(service, alias):
                    return True
        return False

    # -- third-party networks ------------------------------------------------------------------------------
    def _for_protocol(self, protocol: str) -> list[ApplicationService]:
        return [s for s in self.services if protocol in s.protocols and s.url is not None]

    async def protocols(self, only: str | None = None) -> dict[str, JsonDict]:
        """Each protocol the services declare, with its metadata: the first service's answer, with the
        `instances` of every service that answered (as Synapse merges them)."""
        answers: dict[str, list[JsonDict]] = {}
        for service in self.services:
            for protocol in service.protocols:
                if only is not None and protocol != only:
                    continue
                info = await self.api.get_protocol(service, protocol)
                answers.setdefault(protocol, [])
                if info is not None:
                    answers[protocol].append(info)
        merged: dict[str, JsonDict] = {}
        for protocol, infos in answers.items():
            if not infos:
                continue
            combined = dict(infos[0])
            combined["instances"] = [i for info in infos for i in info["instances"]]
            merged[protocol] = combined
        return merged

    async def protocol(self, protocol: str) -> JsonDict:
        found = await self.protocols(protocol)
        if protocol not in found:
            raise not_found("Unknown protocol")
        return found[protocol]

    async def lookup(self, kind: str, protocol: str | None, fields: list[tuple[str, str]]) -> list[JsonDict]:
        """Third-party users or locations: with a protocol, from the services declaring it; without one
        (a reverse lookup by `userid` / `alias`), from every service with protocols. Results are
        concatenated, services that fail count as having found nothing."""
        services = (self._for_protocol(protocol) if protocol is not None
                    else [s for s in self.services if s.protocols and s.url is not None])
        results = await self.api.gather([self.api.query_3pe(s, kind, protocol, fields) for s in services])
        return [r for found in results if found for r in found]

    # -- ping ------------------------------------------------------------------------------------------------
    async def ping(self, service: ApplicationService, txn_id: str | None) -> int:
        """POST /_matrix/app/v1/ping; the round trip in ms. The spec's errors: M_URL_NOT_SET (400),
        M_CONNECTION_TIMEOUT (504), M_BAD_STATUS with the service's status and body (502),
        M_CONNECTION_FAILED (502). A service that answers gets its pending transactions at once."""
        if service.url is None:
            raise url_not_set("The application service does not have a URL set")
        try:
            duration = await self.api.ping(service, txn_id)
        except AppServiceCallError as e:
            if e.kind == "timeout":
                raise connection_timeout(str(e)) from None
            if e.kind == "status" and e.status is not None:
                raise bad_status(e.status, e.body) from None
            raise connection_failed(str(e)) from None
        await self.hs.replication.publish("appservice", self.hs.instance_name, 0,
                                          {"kind": "wake", "as_id": service.id})
        return duration

    def check_ping_caller(self, token: str, as_id: str) -> ApplicationService:
        """The service whose as_token this is, which must be the one in the path (else 403)."""
        service = self.by_as_token(token)
        if service is None:
            raise forbidden("Only application services can use the /appservice/ping endpoint")
        if service.id != as_id:
            raise forbidden("Mismatching application service ID in path")
        return service


def appservice_queries(hs: HomeServer) -> AppServiceQueries:
    """The process's AppServiceQueries, made on first use and kept on the HomeServer (under the name a
    `cached_property` of HomeServer would use, so adding one there changes nothing here)."""
    queries = hs.__dict__.get("appservice_queries")
    if queries is None:
        queries = hs.__dict__["appservice_queries"] = AppServiceQueries(hs)
    assert isinstance(queries, AppServiceQueries)
    return queries
