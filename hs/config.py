"""Homeserver configuration: one YAML file describes a monolith or a whole worker cluster.

Key names follow Synapse's (`listeners`, `database`, `instance_map`, `stream_writers`, `rc_message`,
...) so an admin's knowledge carries over. Validation is strict: an unknown or ill-typed key is an
error that names the key, because a silently ignored typo in production config is worse than a refusal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args
from urllib.parse import quote, urlencode

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from hs.appservice.registration import ApplicationService

RESOURCE_NAMES = {"client", "federation", "media", "replication", "metrics", "keys", "health", "admin"}
SINGLE_WRITER_STREAMS = ("typing", "to_device", "receipts", "presence", "account_data", "push_rules",
                         "device_lists", "un_partial_stated_room")
WORKER_APPS = {"main", "generic_worker", "federation_sender", "pusher", "media_repository",
               "synapse.app.generic_worker", "synapse.app.federation_sender", "synapse.app.pusher",
               "synapse.app.media_repository"}


class ConfigError(Exception):
    """A configuration problem; `problems` holds one line per problem, each naming the key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Listener(Strict):
    port: int = Field(ge=0, le=65535)
    bind_addresses: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    type: Literal["http", "metrics"] = "http"
    tls: bool = False
    x_forwarded: bool = False
    resources: list[str] = Field(default_factory=lambda: ["client"])

    @model_validator(mode="before")
    @classmethod
    def _bind_address(cls, data: Any) -> Any:
        """Synapse's older singular `bind_address` is added to `bind_addresses`, as Synapse does."""
        if isinstance(data, dict) and "bind_address" in data:
            data = dict(data)
            address = data.pop("bind_address")
            if address:
                data["bind_addresses"] = [*data.get("bind_addresses", []), address]
        return data

    @field_validator("resources", mode="before")
    @classmethod
    def _flatten_resources(cls, value: Any) -> Any:
        """Accept Synapse's `[{names: [client, federation]}]` form as well as a plain list."""
        if isinstance(value, list):
            out: list[Any] = []
            for item in value:
                if isinstance(item, dict) and "names" in item:
                    out.extend(item["names"])
                else:
                    out.append(item)
            return out
        return value

    @field_validator("resources")
    @classmethod
    def _known_resources(cls, value: list[str]) -> list[str]:
        unknown = [r for r in value if r not in RESOURCE_NAMES]
        if unknown:
            raise ValueError(f"unknown resource(s) {unknown}; known: {sorted(RESOURCE_NAMES)}")
        return value

    @property
    def all_resources(self) -> set[str]:
        if self.type == "metrics":
            return {"metrics"}  # Synapse's metrics listener serves only metrics
        resources = set(self.resources)
        if resources & {"client", "federation"}:
            # As in Synapse, a client or federation listener also serves the media repository (on the
            # instances that run it: see hs/roles/routes.py).
            resources.add("media")
        return resources


class DatabaseArgs(Strict):
    """Synapse's `database.args`: libpq connection parameters (psycopg2 passes them to libpq) plus the
    pool's `cp_min`/`cp_max`. hs connects with asyncpg, so only parameters it can honour are accepted:
    an unknown one is an error rather than a setting silently dropped."""

    user: str | None = None
    password: str | None = None
    database: str | None = None
    dbname: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    cp_min: int | None = Field(default=None, ge=0)
    cp_max: int | None = Field(default=None, ge=1)
    # Seconds one connection attempt may take (libpq's connect_timeout).
    connect_timeout: float | None = Field(default=None, gt=0)
    # TLS and session parameters asyncpg reads from the connection URI as libpq does.
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    sslcrl: str | None = None
    sslpassword: str | None = None
    passfile: str | None = None
    application_name: str | None = None
    target_session_attrs: str | None = None
    # TCP keepalives on the connections (libpq's parameters; Synapse's sample config sets them).
    keepalives: int | None = Field(default=None, ge=0, le=1)
    keepalives_idle: int | None = Field(default=None, ge=1)
    keepalives_interval: int | None = Field(default=None, ge=1)
    keepalives_count: int | None = Field(default=None, ge=1)


# The DatabaseArgs that travel in the connection URI's query string.
_PG_URI_QUERY_ARGS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslpassword", "passfile",
                      "application_name", "target_session_attrs")
_SQLITE_ARGS = {"database", "cp_min", "cp_max"}
DEFAULT_POOL_MIN = 2
DEFAULT_POOL_MAX = 10


class DatabaseConfig(Strict):
    """`name: sqlite3|psycopg2` with Synapse's `args`, or the shorter `engine` + `path`/`dsn`."""

    name: Literal["sqlite3", "psycopg2", "sqlite", "postgres", "postgresql"] | None = None
    engine: Literal["sqlite", "postgres"] | None = None
    args: DatabaseArgs = Field(default_factory=DatabaseArgs)
    path: str | None = None
    dsn: str | None = None
    # The pool's bounds in hs's shorter form; Synapse's place for them is `args`.
    cp_min: int | None = Field(default=None, ge=0)
    cp_max: int | None = Field(default=None, ge=1)
    # How long start-up keeps retrying a PostgreSQL that does not accept connections yet (a container
    # started alongside it, a server restarting) before giving up: milliseconds, or "30s", "5m".
    startup_timeout: int = 60_000

    @field_validator("startup_timeout", mode="before")
    @classmethod
    def _duration(cls, value: object) -> int:
        return parse_duration_ms(value)

    @model_validator(mode="after")
    def _pick_engine(self) -> DatabaseConfig:
        if self.engine is None:
            if self.name in ("sqlite3", "sqlite"):
                self.engine = "sqlite"
            elif self.name in ("psycopg2", "postgres", "postgresql"):
                self.engine = "postgres"
            elif self.dsn:
                self.engine = "postgres"
            else:
                self.engine = "sqlite"
        if self.engine == "sqlite" and not (self.path or self.args.database):
            raise ValueError("sqlite needs `path` (or `args.database`)")
        return self

    def problems(self) -> list[str]:
        """What the field types cannot say, one line per problem naming the key (run by the top level,
        whose problems are split into lines)."""
        problems: list[str] = []
        if self.engine == "sqlite":
            problems.extend(f"database.args.{key}: not an argument of sqlite3 (it takes {sorted(_SQLITE_ARGS)})"
                            for key in sorted(self.args.model_fields_set - _SQLITE_ARGS))
        if self.args.database is not None and self.args.dbname is not None:
            problems.append("database.args.dbname: given again as database.args.database (give it once)")
        for key in ("cp_min", "cp_max"):
            if getattr(self, key) is not None and getattr(self.args, key) is not None:
                problems.append(f"database.{key}: given again as database.args.{key} (give it once)")
        if self.pool_min > self.pool_max:
            problems.append(f"database.args.cp_min: {self.pool_min} is more than cp_max ({self.pool_max})")
        return problems

    @property
    def pool_min(self) -> int:
        """Connections the PostgreSQL pool keeps open (Synapse's `args.cp_min`)."""
        return next((v for v in (self.args.cp_min, self.cp_min) if v is not None), DEFAULT_POOL_MIN)

    @property
    def pool_max(self) -> int:
        """Connections the PostgreSQL pool may open (Synapse's `args.cp_max`)."""
        return next((v for v in (self.args.cp_max, self.cp_max) if v is not None), DEFAULT_POOL_MAX)

    @property
    def sqlite_path(self) -> str:
        return str(self.path or self.args.database)

    @property
    def postgres_dsn(self) -> str:
        """The connection URI, every part percent-encoded: a password such as `p@ss:w/rd#1%` or with
        spaces arrives at the server as written."""
        if self.dsn:
            return self.dsn
        a = self.args
        auth = quote(a.user or "postgres", safe="")
        if a.password:
            auth += ":" + quote(a.password, safe="")
        host = a.host or "127.0.0.1"
        port = a.port or 5432
        database = quote(a.database or a.dbname or "hs", safe="")
        query = {key: str(getattr(a, key)) for key in _PG_URI_QUERY_ARGS if getattr(a, key) is not None}
        if host.startswith("/"):  # a Unix socket directory, as libpq (and Synapse's psycopg2) take it
            netloc = f"{auth}@"
            query = {"host": host, "port": str(port), **query}
        else:
            netloc = f"{auth}@{f'[{host}]' if ':' in host else quote(host, safe='')}:{port}"
        uri = f"postgresql://{netloc}/{database}"
        return f"{uri}?{urlencode(query, quote_via=quote, safe='/')}" if query else uri


class RedisConfig(Strict):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 6379
    dbid: int = 0
    # Redis 6's ACL user (Synapse's `username`), with `password`.
    username: str | None = None
    password: str | None = None
    url: str | None = None

    @property
    def connection_url(self) -> str:
        if self.url:
            return self.url
        user = quote(self.username, safe="") if self.username else ""
        auth = f"{user}:{quote(self.password, safe='')}@" if self.password else (f"{user}@" if user else "")
        return f"redis://{auth}{self.host}:{self.port}/{self.dbid}"


class InstanceLocation(Strict):
    host: str
    port: int
    tls: bool = False


class RateLimit(Strict):
    per_second: float = 0.2
    burst_count: float = 10


class LoginRateLimit(Strict):
    address: RateLimit = Field(default_factory=lambda: RateLimit(per_second=0.003, burst_count=5))
    account: RateLimit = Field(default_factory=lambda: RateLimit(per_second=0.003, burst_count=5))
    failed_attempts: RateLimit = Field(default_factory=lambda: RateLimit(per_second=0.17, burst_count=3))


class WorkerInstance(Strict):
    app: str = "generic_worker"
    listeners: list[Listener] = Field(default_factory=list)

    @field_validator("app")
    @classmethod
    def _known_app(cls, value: str) -> str:
        if value not in WORKER_APPS:
            raise ValueError(f"unknown worker app {value!r}; known: {sorted(WORKER_APPS)}")
        return value.removeprefix("synapse.app.")


class StreamWriters(BaseModel):
    """`stream_writers`: each stream's writer instance(s), a name or a list; `main` when not given.

    Which streams exist, and which may have several writers, is the stream registry's
    (hs/streams/registry.py), so the keys are checked against it rather than listed here."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _listify(cls, data: Any) -> Any:
        """A single name is a list of one; what is neither is refused. Which keys are streams is
        checked with the other cluster rules (`HomeserverConfig._cluster_rules`), one line each."""
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        for key, value in data.items():
            writers = [value] if isinstance(value, str) else value
            if not isinstance(writers, list) or not all(isinstance(w, str) for w in writers):
                raise ValueError(f"{key}: must be an instance name or a list of them")
            out[key] = writers
        return out

    def writers_of(self, stream: str) -> list[str]:
        """The stream's writers (`main` unless configured)."""
        return list((self.model_extra or {}).get(stream, ["main"]))

    def __getattr__(self, name: str) -> Any:
        # `stream_writers.events` reads like the keys an admin writes.
        if not name.startswith("_"):
            from hs.streams.registry import stream_names

            if name in stream_names():
                return self.writers_of(name)
        return super().__getattr__(name)  # type: ignore[misc]


_DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000,
                      "y": 31_536_000_000}


# Synapse's default `ip_range_blacklist`: private, loopback, link-local, multicast and documentation
# ranges. Outbound federation never connects to them unless `ip_range_whitelist` names the address.
DEFAULT_IP_RANGE_BLACKLIST = [
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "192.0.0.0/24",
    "169.254.0.0/16", "192.88.99.0/24", "198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "::1/128", "fe80::/10", "fc00::/7", "2001:db8::/32", "ff00::/8",
    "fec0::/10",
]


class TrustedKeyServer(Strict):
    """One entry of `trusted_key_servers`: a notary asked for other servers' keys (Synapse's shape)."""

    server_name: str
    # The notary's own keys (`ed25519:<version>` -> unpadded base64); without them its keys are fetched
    # from it directly, which Synapse only allows with `accept_keys_insecurely`.
    verify_keys: dict[str, str] | None = None
    accept_keys_insecurely: bool = False


class FederationTuning(Strict):
    """Synapse's `federation:` section: how outbound sending backs off from a server that fails.

    After a failed transaction the sender waits `destination_min_retry_interval`, then multiplies the
    wait by `destination_retry_multiplier` after each further failure, up to
    `destination_max_retry_interval`; any request from that server ends the wait at once. hs starts at
    2 s where Synapse starts at 10 minutes (a small server restarting should not lose ten minutes of
    messages); the multiplier soon spaces attempts out."""

    destination_min_retry_interval: int = 2_000
    destination_retry_multiplier: float = Field(default=2.0, ge=1.0, le=100.0)
    destination_max_retry_interval: int = 86_400_000

    @field_validator("destination_min_retry_interval", "destination_max_retry_interval", mode="before")
    @classmethod
    def _duration(cls, value: object) -> int:
        return parse_duration_ms(value)

    @model_validator(mode="after")
    def _ordered(self) -> FederationTuning:
        if self.destination_min_retry_interval < 1:
            raise ValueError("destination_min_retry_interval must be at least 1 ms")
        if self.destination_max_retry_interval < self.destination_min_retry_interval:
            raise ValueError("destination_max_retry_interval must not be below destination_min_retry_interval")
        return self


def parse_size(value: object) -> int:
    """Synapse's sizes: an integer of bytes, or a string like "50M", "512K", "1G" (powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 52428800 (bytes), '50M' or '512K'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        text = value.strip().upper()
        units = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
        if text[-1:] in units and text[:-1].isdigit():
            return int(text[:-1]) * units[text[-1]]
        if text.isdigit():
            return int(text)
    raise ValueError(f"{value!r} is not a size such as 52428800 (bytes), '50M' or '512K'")


class ThumbnailSize(Strict):
    """One `thumbnail_sizes` entry: made for every image upload (Synapse's shape)."""

    width: int = Field(ge=1, le=4096)
    height: int = Field(ge=1, le=4096)
    method: Literal["crop", "scale"] = "scale"


DEFAULT_THUMBNAIL_SIZES = [
    ThumbnailSize(width=32, height=32, method="crop"), ThumbnailSize(width=96, height=96, method="crop"),
    ThumbnailSize(width=320, height=240, method="scale"), ThumbnailSize(width=640, height=480, method="scale"),
    ThumbnailSize(width=800, height=600, method="scale"),
]


class MediaUploadLimit(Strict):
    """One `media_upload_limits` entry: a user may upload at most `max_size` bytes per `time_period`."""

    time_period: int
    max_size: int

    @field_validator("time_period", mode="before")
    @classmethod
    def _period(cls, value: object) -> int:
        period = parse_duration_ms(value)
        if period < 1000:
            raise ValueError("time_period must be at least 1s")
        return period

    @field_validator("max_size", mode="before")
    @classmethod
    def _size(cls, value: object) -> int:
        return parse_size(value)


class MediaRetention(Strict):
    """Synapse's `media_retention`: media not accessed for this long is deleted (None: kept)."""

    local_media_lifetime: int | None = None
    remote_media_lifetime: int | None = None

    @field_validator("local_media_lifetime", "remote_media_lifetime", mode="before")
    @classmethod
    def _lifetime(cls, value: object) -> int | None:
        return None if value is None else parse_duration_ms(value)


# `module` names accepted for an S3 media storage provider: Synapse's synapse-s3-storage-provider
# module (so its config carries over) and hs's own name for the same thing.
S3_PROVIDER_MODULES = ("s3_storage_provider.S3StorageProviderBackend", "hs.media.s3.S3Storage")


class MediaStorageProvider(Strict):
    """One `media_storage_providers` entry (Synapse's shape). Files are always written to
    `media_store_path` first; a provider keeps a second copy (of local uploads with `store_local`, of
    remote media with `store_remote`), awaited before the upload is answered with `store_synchronous`.
    A file missing from `media_store_path` is read from the providers."""

    module: str
    store_local: bool = True
    store_remote: bool = False
    store_synchronous: bool = True
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("module")
    @classmethod
    def _known_module(cls, value: str) -> str:
        if value not in S3_PROVIDER_MODULES:
            raise ValueError(f"{value!r} is not a storage provider hs has (known: {', '.join(S3_PROVIDER_MODULES)})")
        return value

    @field_validator("config")
    @classmethod
    def _valid_s3_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Checked when the config is read (not at the first upload): each problem names its key."""
        from hs.media.s3 import S3Storage  # (no import of aiobotocore or of this module)

        S3Storage.from_provider_config(value)
        return value


class OEmbedConfig(Strict):
    """Synapse's `oembed`: which oEmbed providers URL previews ask (YouTube and Twitter/X built in,
    unless `disable_default_providers`; `additional_providers` are providers.json-format files)."""

    disable_default_providers: bool = False
    additional_providers: list[str] = Field(default_factory=list)


class OldSigningKey(Strict):
    """An `old_signing_keys` entry: a retired public key (still published, so that events it signed
    keep verifying elsewhere) and when it stopped being used."""

    key: str
    expired_ts: int = Field(ge=0)


def parse_duration_ms(value: object) -> int:
    """Synapse's durations: an integer of milliseconds, or a string like "30s", "5m", "1h", "7d"."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 3600000 (ms), '1h' or '30m'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        text = value.strip()
        for unit in sorted(_DURATION_UNITS_MS, key=len, reverse=True):
            number = text[:-len(unit)]
            if text.endswith(unit) and number.isdigit():
                return int(number) * _DURATION_UNITS_MS[unit]
        if text.isdigit():
            return int(text)
    raise ValueError(f"{value!r} is not a duration such as 3600000 (ms), '1h' or '30m'")


class ServerNoticesConfig(Strict):
    """Synapse's `server_notices`: the system user that sends notices (POST
    /_synapse/admin/v1/send_server_notice) and the room each user gets them in."""

    system_mxid_localpart: str
    system_mxid_display_name: str | None = None
    system_mxid_avatar_url: str | None = None
    room_name: str = "Server Notices"
    room_avatar_url: str | None = None
    room_topic: str | None = None
    auto_join: bool = False


class HomeserverConfig(Strict):
    server_name: str
    public_baseurl: str | None = None
    pid_file: str | None = None
    log_level: str = "INFO"
    # A Python logging dictConfig YAML file, as Synapse's (hs/logging_setup.py): applied at start-up
    # instead of `log_level`'s plain stderr format.
    log_config: str | None = None
    listeners: list[Listener] = Field(default_factory=lambda: [Listener(port=8008, resources=["client"])])
    database: DatabaseConfig = Field(default_factory=lambda: DatabaseConfig(engine="sqlite", path="homeserver.db"))
    redis: RedisConfig = Field(default_factory=RedisConfig)
    signing_key_path: str = "signing.key"
    media_store_path: str = "media_store"
    # -- media repository (Synapse's keys; hs/media/) -------------------------------------------------
    max_upload_size: int = 50 * 1024 * 1024  # bytes; "50M" and the like are accepted
    max_image_pixels: int = 32 * 1024 * 1024  # larger images are stored but not thumbnailed
    dynamic_thumbnails: bool = False
    thumbnail_sizes: list[ThumbnailSize] = Field(default_factory=lambda: list(DEFAULT_THUMBNAIL_SIZES))
    # Media uploaded while this is on is served only by the authenticated endpoints (spec v1.11).
    enable_authenticated_media: bool = True
    max_pending_media_uploads: int = Field(default=5, ge=1, le=10_000)
    # How long a media ID reserved with POST /media/v1/create may wait for its upload.
    unused_expiration_time: int = 86_400_000
    media_upload_limits: list[MediaUploadLimit] = Field(default_factory=list)
    # Remote media downloads, per client address: a token bucket of bytes.
    remote_media_download_burst_count: int = 500 * 1024 * 1024
    remote_media_download_per_second: int = 87 * 1024
    prevent_media_downloads_from: list[str] = Field(default_factory=list)
    media_retention: MediaRetention = Field(default_factory=MediaRetention)
    media_storage_providers: list[MediaStorageProvider] = Field(default_factory=list)
    url_preview_enabled: bool = False
    url_preview_ip_range_blacklist: list[str] | None = None
    url_preview_ip_range_whitelist: list[str] = Field(default_factory=list)
    url_preview_url_blacklist: list[dict[str, str]] = Field(default_factory=list)
    url_preview_accept_language: list[str] = Field(default_factory=lambda: ["en"])
    max_spider_size: int = 10 * 1024 * 1024
    oembed: OEmbedConfig = Field(default_factory=OEmbedConfig)
    max_request_body_size: int = 1024 * 1024 * 2
    enable_registration: bool = False
    enable_registration_without_verification: bool = False
    # Guest accounts (POST /register?kind=guest, the spec's Guest Access module): off by default, as in
    # Synapse. Guests may call only the endpoints hs/services/auth.py lists for them.
    allow_guest_access: bool = False
    # Registration needs an admin-made token (the m.login.registration_token UIA stage), as Synapse's key.
    registration_requires_token: bool = False
    # Server notices (Synapse's key): absent, the send_server_notice admin API is off.
    server_notices: ServerNoticesConfig | None = None
    registration_shared_secret: str | None = None
    registration_shared_secret_path: str | None = None
    macaroon_secret_key: str | None = None
    form_secret: str | None = None
    default_room_version: str = "12"
    use_presence: bool = True
    allow_public_rooms_without_auth: bool = False
    require_auth_for_profile_requests: bool = False
    bcrypt_rounds: int = 12
    access_token_cache_size: int = 10000
    rc_message: RateLimit = Field(default_factory=lambda: RateLimit(per_second=0.2, burst_count=10))
    rc_registration: RateLimit = Field(default_factory=lambda: RateLimit(per_second=0.17, burst_count=3))
    rc_login: LoginRateLimit = Field(default_factory=LoginRateLimit)
    # TURN servers for VoIP calls (GET /voip/turnServer): shared-secret (TURN REST API) credentials
    # or a fixed username and password.
    turn_uris: list[str] = Field(default_factory=list)
    turn_shared_secret: str | None = None
    turn_shared_secret_path: str | None = None
    turn_username: str | None = None
    turn_password: str | None = None
    turn_user_lifetime: int = 3_600_000  # ms; "1h" and the like are accepted
    turn_allow_guests: bool = True
    rc_joins: dict[str, RateLimit] = Field(default_factory=lambda: {
        "local": RateLimit(per_second=0.1, burst_count=10),
        "remote": RateLimit(per_second=0.01, burst_count=10),
    })
    # -- federation (Synapse's keys) -------------------------------------------------------------------
    # The certificate and key a `tls: true` listener serves (PEM files; the certificate may be a chain).
    tls_certificate_path: str | None = None
    tls_private_key_path: str | None = None
    # Extra CA certificates trusted for outbound federation (PEM files), e.g. a private CA in tests.
    federation_custom_ca_list: list[str] = Field(default_factory=list)
    federation_verify_certificates: bool = True
    federation_client_minimum_tls_version: Literal["1", "1.0", "1.1", "1.2", "1.3"] = "1"
    # Absent (None): federate with every server; a list: only with those, in both directions.
    federation_domain_whitelist: list[str] | None = None
    # Outbound requests (federation, and later URL previews and push) never connect to these ranges,
    # except to addresses `ip_range_whitelist` names. `federation_ip_range_blacklist` is Synapse's older
    # name, used when `ip_range_blacklist` is not given.
    ip_range_blacklist: list[str] | None = None
    federation_ip_range_blacklist: list[str] | None = None
    ip_range_whitelist: list[str] = Field(default_factory=list)
    # Notaries asked for other servers' keys; Synapse's default is matrix.org. `[]` asks servers directly.
    trusted_key_servers: list[TrustedKeyServer] = Field(
        default_factory=lambda: [TrustedKeyServer(server_name="matrix.org")])
    # How long the keys this server publishes are valid for (`valid_until_ts` = now + this).
    key_refresh_interval: int = 86_400_000
    old_signing_keys: dict[str, OldSigningKey] = Field(default_factory=dict)
    allow_profile_lookup_over_federation: bool = True
    allow_public_rooms_over_federation: bool = False
    federation: FederationTuning = Field(default_factory=FederationTuning)
    # -- cluster --------------------------------------------------------------------------------------
    instance_map: dict[str, InstanceLocation] = Field(default_factory=dict)
    stream_writers: StreamWriters = Field(default_factory=StreamWriters)
    workers: dict[str, WorkerInstance] = Field(default_factory=dict)
    worker_replication_secret: str | None = None
    worker_replication_secret_path: str | None = None
    run_background_tasks_on: str = "main"
    federation_sender_instances: list[str] = Field(default_factory=list)
    pusher_instances: list[str] = Field(default_factory=list)
    send_federation: bool = True
    start_pushers: bool = True
    enable_media_repo: bool = True
    update_user_directory_from_worker: str | None = None
    notify_appservices_from_worker: str | None = None
    # Application service registration files (hs/appservice/registration.py), read at start-up.
    app_service_config_files: list[str] = Field(default_factory=list)
    media_instance_running_background_jobs: str | None = None

    # Where relative paths are resolved from (the config file's directory); not a config key.
    config_dir: str = Field(default=".", exclude=True)
    # The registrations read from app_service_config_files (by parse_config); not a config key.
    _app_services: list[ApplicationService] = PrivateAttr(default_factory=list)
    # One line per Synapse key the file gives that hs ignores (hs/config_synapse.py), logged at start-up.
    _notices: list[str] = PrivateAttr(default_factory=list)

    @property
    def notices(self) -> list[str]:
        return self._notices

    @property
    def app_services(self) -> list[ApplicationService]:
        return self._app_services

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str) -> str:
        if not value or any(c in value for c in "/@!#$ ") or value.count(":") > 1 and "]" not in value:
            raise ValueError(f"{value!r} is not a valid Matrix server name")
        return value

    @field_validator("turn_user_lifetime", "key_refresh_interval", "unused_expiration_time", mode="before")
    @classmethod
    def _duration(cls, value: object) -> int:
        return parse_duration_ms(value)

    @field_validator("max_upload_size", "max_image_pixels", "max_spider_size", "remote_media_download_burst_count",
                     "remote_media_download_per_second", mode="before")
    @classmethod
    def _size(cls, value: object) -> int:
        return parse_size(value)

    @field_validator("url_preview_url_blacklist")
    @classmethod
    def _url_blacklist(cls, value: list[dict[str, str]]) -> list[dict[str, str]]:
        """Checked when the config is read, so a bad pattern is not a 500 on every preview."""
        from hs.media.safe_fetch import UrlBlacklist

        UrlBlacklist(value)
        return value

    @field_validator("ip_range_blacklist", "federation_ip_range_blacklist", "ip_range_whitelist",
                     "url_preview_ip_range_blacklist", "url_preview_ip_range_whitelist")
    @classmethod
    def _ip_ranges(cls, value: list[str] | None) -> list[str] | None:
        import ipaddress

        for cidr in value or []:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP range such as 10.0.0.0/8 or ::1/128") from None
        return value

    @field_validator("old_signing_keys")
    @classmethod
    def _old_key_ids(cls, value: dict[str, OldSigningKey]) -> dict[str, OldSigningKey]:
        for key_id in value:
            if not key_id.startswith("ed25519:") or len(key_id) == len("ed25519:"):
                raise ValueError(f"{key_id!r} is not a key ID such as 'ed25519:a_old1'")
        return value

    @field_validator("turn_uris")
    @classmethod
    def _turn_uris(cls, value: list[str]) -> list[str]:
        for uri in value:
            if not uri.startswith(("turn:", "turns:")):
                raise ValueError(f"{uri!r} is not a TURN URI (turn:host:port?transport=udp, or turns:...)")
        return value

    @field_validator("default_room_version")
    @classmethod
    def _room_version(cls, value: str) -> str:
        from hs.events.room_versions import KNOWN_ROOM_VERSIONS

        if value not in KNOWN_ROOM_VERSIONS:
            raise ValueError(f"unknown room version {value!r}; known: {sorted(KNOWN_ROOM_VERSIONS, key=int)}")
        return value

    @model_validator(mode="after")
    def _cluster_rules(self) -> HomeserverConfig:
        problems: list[str] = self.database.problems()
        if self.workers and self.database.engine == "sqlite":
            problems.append("database: workers need PostgreSQL; SQLite cannot be shared between processes")
        if self.workers and not self.redis.enabled:
            problems.append("redis.enabled: workers replicate through Redis; set redis.enabled: true")
        instances = {"main", *self.workers}
        from hs.streams.registry import is_multi_writer, stream_names  # the registry imports the streams

        for key in self.stream_writers.model_extra or {}:
            if key not in stream_names():
                problems.append(f"stream_writers.{key}: not a stream (streams: {', '.join(stream_names())})")
        for stream in stream_names():
            writers = self.stream_writers.writers_of(stream)
            if not writers:
                problems.append(f"stream_writers.{stream}: needs at least one writer")
            if not is_multi_writer(stream) and len(writers) > 1:
                problems.append(f"stream_writers.{stream}: only one writer is supported, got {writers}")
            for w in writers:
                if w not in instances:
                    problems.append(f"stream_writers.{stream}: {w!r} is not a configured worker")
                elif w != "main" and w not in self.instance_map:
                    problems.append(f"stream_writers.{stream}: {w!r} is missing from instance_map")
        tls_listeners = [name for name, lst in self.all_listeners() if lst.tls]
        if tls_listeners and not (self.tls_certificate_path and self.tls_private_key_path):
            problems.append(f"tls_certificate_path: listeners with `tls: true` (on {sorted(set(tls_listeners))}) "
                            "need tls_certificate_path and tls_private_key_path")
        if self.run_background_tasks_on not in instances:
            problems.append(f"run_background_tasks_on: {self.run_background_tasks_on!r} is not a configured worker")
        for key in ("federation_sender_instances", "pusher_instances"):
            for w in getattr(self, key):
                if w not in instances:
                    problems.append(f"{key}: {w!r} is not a configured worker")
        for key in ("update_user_directory_from_worker", "notify_appservices_from_worker",
                    "media_instance_running_background_jobs"):
            named = getattr(self, key)
            if named is not None and named not in instances:
                problems.append(f"{key}: {named!r} is not a configured worker (known: {sorted(instances)})")
        if self.workers and not (self.worker_replication_secret or self.worker_replication_secret_path):
            for name, listener in self.all_listeners():
                if "replication" in listener.resources and any(
                    a not in ("127.0.0.1", "::1", "localhost") for a in listener.bind_addresses
                ):
                    problems.append(
                        f"worker_replication_secret: instance {name!r} exposes a replication listener on "
                        f"{listener.bind_addresses} without a secret"
                    )
        if self.url_preview_enabled and self.url_preview_ip_range_blacklist is None:
            problems.append("url_preview_ip_range_blacklist: required when url_preview_enabled is true (as in "
                            "Synapse): list the ranges previews may not fetch, e.g. 127.0.0.0/8 and 10.0.0.0/8")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def all_listeners(self) -> list[tuple[str, Listener]]:
        out = [("main", listener) for listener in self.listeners]
        for name, worker in self.workers.items():
            out.extend((name, listener) for listener in worker.listeners)
        return out

    def resolve_path(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.config_dir) / p

    def get_replication_secret(self) -> str | None:
        if self.worker_replication_secret:
            return self.worker_replication_secret
        if self.worker_replication_secret_path:
            return self.resolve_path(self.worker_replication_secret_path).read_text().strip()
        return None

    def get_turn_shared_secret(self) -> str | None:
        if self.turn_shared_secret:
            return self.turn_shared_secret
        if self.turn_shared_secret_path:
            return self.resolve_path(self.turn_shared_secret_path).read_text().strip()
        return None

    def get_registration_shared_secret(self) -> str | None:
        if self.registration_shared_secret:
            return self.registration_shared_secret
        if self.registration_shared_secret_path:
            return self.resolve_path(self.registration_shared_secret_path).read_text().strip()
        return None

    @property
    def outbound_ip_blacklist(self) -> list[str]:
        """The ranges outbound requests may not reach (Synapse's precedence of the two keys)."""
        if self.ip_range_blacklist is not None:
            return self.ip_range_blacklist
        if self.federation_ip_range_blacklist is not None:
            return self.federation_ip_range_blacklist
        return DEFAULT_IP_RANGE_BLACKLIST

    def federation_allowed(self, server_name: str) -> bool:
        """Whether `federation_domain_whitelist` lets this server federate with `server_name`."""
        return self.federation_domain_whitelist is None or server_name in self.federation_domain_whitelist

    def listeners_for(self, instance: str) -> list[Listener]:
        if instance == "main":
            return self.listeners
        return self.workers[instance].listeners

    def app_for(self, instance: str) -> str:
        return "main" if instance == "main" else self.workers[instance].app


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, directly or inside a list, dict or Optional."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _keys_at(loc: tuple[Any, ...]) -> set[str]:
    """The keys the model at `loc` (a validation error's location, last part excluded) accepts, so that
    a typo in a nested section can be answered with the closest of them."""
    model: type[BaseModel] = HomeserverConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is not None:  # list indices and dict keys (instance names, ...) keep the model
            model = _model_in(field.annotation) or model
    return set(model.model_fields)


def _format_errors(err: ValidationError) -> list[str]:
    from hs.config_synapse import unknown_key_problems

    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            problems.extend(unknown_key_problems(loc, str(e["loc"][-1]), _keys_at(e["loc"][:-1])))
            continue
        elif e["type"] == "missing":
            msg = "required key is missing"
        if loc == "(top level)" and e["type"] == "value_error":  # the cross-key rules: each names its key
            problems.extend(msg.split("; "))
        else:
            problems.append(f"{loc}: {msg}")
    return problems


def parse_config(data: Any, config_dir: str = ".") -> HomeserverConfig:
    if not isinstance(data, dict):
        raise ConfigError(["(top level): the config must be a YAML mapping"])
    data = dict(data)
    data.pop("config_dir", None)
    data.pop("media_store_path_legacy", None)  # accepted and ignored since hs's first releases
    # Synapse's keys hs does not read: a notice each, or refused where ignoring them would change
    # security or data; any other unknown key is a typo, refused with the closest known key.
    from hs.config_synapse import screen

    screened = screen(data, HomeserverConfig.model_fields)
    try:
        cfg = HomeserverConfig.model_validate(screened.data)
    except ValidationError as err:
        raise ConfigError(screened.problems + _format_errors(err)) from None
    if screened.problems:
        raise ConfigError(screened.problems)
    cfg._notices = screened.notices
    cfg.config_dir = config_dir
    if cfg.app_service_config_files:
        from hs.appservice.registration import RegistrationError, load_app_services

        try:  # read now, so that start-up and `hs check-config` name a bad file and key
            cfg._app_services = load_app_services([cfg.resolve_path(p) for p in cfg.app_service_config_files],
                                                  cfg.server_name)
        except RegistrationError as e:
            raise ConfigError([f"app_service_config_files: {line}" for line in str(e).splitlines()]) from None
    if cfg.url_preview_enabled and cfg.oembed.additional_providers:
        from hs.media.oembed import OEmbedProviders

        try:  # the files, read now (relative to the config file) rather than at the first preview
            OEmbedProviders(use_defaults=False,
                            provider_files=[cfg.resolve_path(p) for p in cfg.oembed.additional_providers])
        except ValueError as e:
            raise ConfigError([str(e)]) from None
    return cfg


def load_config(path: str | os.PathLike[str]) -> HomeserverConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError([f"{p}: cannot read config file: {e.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"{p}: not valid YAML: {e}"]) from None
    return parse_config(data, config_dir=str(p.parent.resolve()))
