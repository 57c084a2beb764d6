"""Application service registrations: the YAML files named by `app_service_config_files` (Synapse's key).

A registration (application service API, "Registration") names the service (`id`), where the homeserver
reaches it (`url`; null for a service that only acts as a client), the two tokens (`as_token`: the service
calling the homeserver; `hs_token`: the homeserver calling the service), the service's own user
(`sender_localpart`), and the namespaces of users, room aliases and room IDs it is interested in, each a
list of `{regex, exclusive}`. An exclusive namespace belongs to the service alone: nobody else may
register such a user or create such an alias.

As in Synapse, a regex matches from the start of the string (Python's `re.match`: anchored at the
start, not at the end); write `$` to anchor the end. Unknown keys are accepted (registrations carry
bridge-specific extras) except where their absence would change security.

Files are read and checked at start-up (and by `hs check-config`); every problem names the file and the
key. Two services may not share an `id` or an `as_token`, and an exclusive namespace may not be claimed by
two services (the same regex, or one service's sender inside another's exclusive user namespace).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# MSC2409 (ephemeral events to appservices) keys: the stable one and the unstable prefix bridges send.
RECEIVE_EPHEMERAL_KEYS = ("receive_ephemeral", "de.sorunome.msc2409.push_ephemeral")
MSC3202_KEY = "org.matrix.msc3202"  # device lists and one-time key counts in transactions; device masquerading
MSC4190_KEY = "io.element.msc4190"  # device management for appservice users
NAMESPACE_KINDS = ("users", "aliases", "rooms")


@dataclass(frozen=True)
class Namespace:
    regex: str
    exclusive: bool
    pattern: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, value: str) -> bool:
        return self.pattern.match(value) is not None


@dataclass(frozen=True)
class ApplicationService:
    """One registered application service (a parsed registration file)."""

    id: str
    url: str | None
    as_token: str
    hs_token: str
    sender: str  # the service's own user ID (@sender_localpart:server_name)
    namespaces: dict[str, tuple[Namespace, ...]]  # "users" / "aliases" / "rooms"
    rate_limited: bool = True
    protocols: tuple[str, ...] = ()
    ip_range_whitelist: tuple[str, ...] = ()
    receive_ephemeral: bool = False
    msc3202: bool = False
    msc4190: bool = False
    source: str = ""  # the file it came from, for messages

    # -- namespaces ---------------------------------------------------------------------------------------
    def _matches(self, kind: str, value: str, exclusive_only: bool = False) -> bool:
        return any(ns.matches(value) for ns in self.namespaces.get(kind, ()) if ns.exclusive or not exclusive_only)

    def is_user_in_namespace(self, user_id: str) -> bool:
        """Whether the service may act as this user (its sender, or a user of its namespaces)."""
        return user_id == self.sender or self._matches("users", user_id)

    def is_exclusive_user(self, user_id: str) -> bool:
        return user_id == self.sender or self._matches("users", user_id, exclusive_only=True)

    def is_exclusive_alias(self, alias: str) -> bool:
        return self._matches("aliases", alias, exclusive_only=True)

    def is_exclusive_room(self, room_id: str) -> bool:
        return self._matches("rooms", room_id, exclusive_only=True)

    def is_interested_in_user(self, user_id: str) -> bool:
        return self.is_user_in_namespace(user_id)

    def is_interested_in_alias(self, alias: str) -> bool:
        return self._matches("aliases", alias)

    def is_interested_in_room_id(self, room_id: str) -> bool:
        return self._matches("rooms", room_id)


class RegistrationError(ValueError):
    """A problem with a registration file; the message names the file and the key."""


def _namespaces(source: str, raw: Any) -> dict[str, tuple[Namespace, ...]]:
    if raw is None:
        return {kind: () for kind in NAMESPACE_KINDS}
    if not isinstance(raw, dict):
        raise RegistrationError(f"{source}: namespaces: must be a mapping of users/aliases/rooms")
    out: dict[str, tuple[Namespace, ...]] = {}
    for kind in NAMESPACE_KINDS:
        items = raw.get(kind) or []
        if not isinstance(items, list):
            raise RegistrationError(f"{source}: namespaces.{kind}: must be a list of {{regex, exclusive}}")
        parsed = []
        for i, item in enumerate(items):
            where = f"{source}: namespaces.{kind}[{i}]"
            if not isinstance(item, dict):
                raise RegistrationError(f"{where}: must be a mapping with `regex` and `exclusive`")
            regex, exclusive = item.get("regex"), item.get("exclusive", False)
            if not isinstance(regex, str) or not regex:
                raise RegistrationError(f"{where}.regex: must be a non-empty string")
            if not isinstance(exclusive, bool):
                raise RegistrationError(f"{where}.exclusive: must be true or false")
            try:
                pattern = re.compile(regex)
            except re.error as e:
                raise RegistrationError(f"{where}.regex: not a valid regular expression ({e})") from None
            parsed.append(Namespace(regex, exclusive, pattern))
        out[kind] = tuple(parsed)
    return out


def _string(source: str, data: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise RegistrationError(f"{source}: {key}: required, a non-empty string")
    return value


def parse_registration(data: Any, server_name: str, source: str = "(registration)") -> ApplicationService:
    """One registration's content, checked."""
    if not isinstance(data, dict):
        raise RegistrationError(f"{source}: must be a YAML mapping")
    service_id = _string(source, data, "id")
    url = _string(source, data, "url", optional=True) if "url" in data else None
    if "url" not in data:
        raise RegistrationError(f"{source}: url: required (null for a service the homeserver never calls)")
    if url is not None and not re.match(r"^https?://", url):
        raise RegistrationError(f"{source}: url: must be an http:// or https:// URL, or null")
    as_token = _string(source, data, "as_token")
    hs_token = _string(source, data, "hs_token")
    localpart = _string(source, data, "sender_localpart")
    assert service_id and as_token and hs_token and localpart
    if ":" in localpart or localpart.startswith("@"):
        raise RegistrationError(f"{source}: sender_localpart: a localpart, without @ or :server")
    flags: dict[str, bool] = {}
    for key in ("rate_limited", *RECEIVE_EPHEMERAL_KEYS, MSC3202_KEY, MSC4190_KEY):
        value = data.get(key)
        if value is not None and not isinstance(value, bool):
            raise RegistrationError(f"{source}: {key}: must be true or false")
        flags[key] = bool(value) if value is not None else (key == "rate_limited")
    protocols = data.get("protocols") or []
    if not isinstance(protocols, list) or not all(isinstance(p, str) for p in protocols):
        raise RegistrationError(f"{source}: protocols: must be a list of strings")
    whitelist = data.get("ip_range_whitelist") or []
    if not isinstance(whitelist, list) or not all(isinstance(p, str) for p in whitelist):
        raise RegistrationError(f"{source}: ip_range_whitelist: must be a list of CIDR ranges")
    for cidr in whitelist:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise RegistrationError(f"{source}: ip_range_whitelist: {cidr!r} is not an IP range") from None
    return ApplicationService(
        id=service_id, url=url, as_token=as_token, hs_token=hs_token, sender=f"@{localpart}:{server_name}",
        namespaces=_namespaces(source, data.get("namespaces")), rate_limited=flags["rate_limited"],
        protocols=tuple(protocols), ip_range_whitelist=tuple(whitelist),
        receive_ephemeral=any(flags[k] for k in RECEIVE_EPHEMERAL_KEYS), msc3202=flags[MSC3202_KEY],
        msc4190=flags[MSC4190_KEY], source=source)


def check_conflicts(services: list[ApplicationService]) -> list[str]:
    """Problems between services: a shared id or as_token, or an exclusive namespace claimed twice."""
    problems: list[str] = []
    for i, a in enumerate(services):
        for b in services[i + 1:]:
            pair = f"{a.source} and {b.source}"
            if a.id == b.id:
                problems.append(f"{pair}: id: both are {a.id!r}")
            if a.as_token == b.as_token:
                problems.append(f"{pair}: as_token: both use the same token")
            if a.hs_token == b.hs_token:
                problems.append(f"{pair}: hs_token: both use the same token")
            for kind in NAMESPACE_KINDS:
                mine = {ns.regex for ns in a.namespaces[kind] if ns.exclusive}
                theirs = {ns.regex for ns in b.namespaces[kind] if ns.exclusive}
                for regex in sorted(mine & theirs):
                    problems.append(f"{pair}: namespaces.{kind}: both claim {regex!r} exclusively")
            for x, y in ((a, b), (b, a)):
                if y.is_exclusive_user(x.sender):
                    problems.append(f"{pair}: {x.source}'s sender {x.sender} is in {y.source}'s exclusive users")
    return problems


def load_app_services(paths: list[Path], server_name: str) -> list[ApplicationService]:
    """The registrations in these files, checked one by one and against each other."""
    services: list[ApplicationService] = []
    problems: list[str] = []
    for path in paths:
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            problems.append(f"{path}: cannot read the registration file: {e.strerror}")
            continue
        except yaml.YAMLError as e:
            problems.append(f"{path}: not valid YAML: {e}")
            continue
        try:
            services.append(parse_registration(data, server_name, str(path)))
        except RegistrationError as e:
            problems.append(str(e))
    problems.extend(check_conflicts(services))
    if problems:
        raise RegistrationError("\n".join(problems))
    return services
