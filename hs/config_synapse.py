"""Synapse's top-level config keys, classified, so that a Synapse admin's homeserver.yaml starts hs.

Every key Synapse's config classes read at the top level (synapse/config/*.py, Synapse 1.16x) is in
one of four classes:

* **hs**: hs has a field of that name with Synapse's meaning (`HomeserverConfig`); not listed below,
  read from the model, so a key hs gains moves class by itself.
* **no effect**: the concern does not exist in hs (phone-home stats, Twisted's reactor, caches sized
  by hand, daemonizing, ...): accepted, with a one-line notice.
* **unsupported**: a Synapse feature hs has not built: accepted, with the notice "Synapse option `X` is
  not supported by hs", because ignoring it leaves the server as safe and the data as kept as without it.
* **refused**: an unsupported feature whose absence would change security or data (an SSO provider, a
  password policy, message retention, token lifetimes, ...): start-up refuses while the option is in
  effect, saying why. Most are refused only in effect (`enabled: true`, a non-empty list, `false` for
  an option that turns something off); the same key in its default or off state is a plain notice.

A key in none of these is a typo or an unknown key: refused, with the closest known key suggested.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["no_effect", "unsupported", "refused"]


def _in_effect(value: Any) -> bool:
    """Whether an option is switched on: set to something, and not `enabled: false`."""
    if value is None or value is False or value == "" or value == [] or value == {}:
        return False
    if isinstance(value, dict) and value.get("enabled") is False:
        return False
    return True


def _is_false(value: Any) -> bool:
    return value is False


def _is_true(value: Any) -> bool:
    return value is True


def _disables(value: Any) -> bool:
    """A section whose `enabled: false` turns off something hs always does."""
    return isinstance(value, dict) and value.get("enabled") is False


def _password_policy(value: Any) -> bool:
    """`password_config` matters when it turns password login off or sets a policy hs would not enforce."""
    if not isinstance(value, dict):
        return _in_effect(value)
    policy = value.get("policy")
    return (value.get("enabled") in (False, "only_for_reauth") or value.get("localdb_enabled") is False
            or (isinstance(policy, dict) and policy.get("enabled", True) is not False and len(policy) > 0))


def _encryption_default(value: Any) -> bool:
    return value not in (None, "off")


def _delegated_auth(value: Any) -> bool:
    """`experimental_features` matters to security only where it delegates authentication (MSC3861)."""
    msc3861 = value.get("msc3861") if isinstance(value, dict) else None
    return isinstance(msc3861, dict) and msc3861.get("enabled") is True


def _push_without_content(value: Any) -> bool:
    return isinstance(value, dict) and (value.get("include_content") is False or value.get("enabled") is False)


@dataclass(frozen=True)
class SynapseKey:
    kind: Kind
    reason: str
    # For "refused": whether the given value is in effect (refused) or harmless (a notice).
    refuse_if: Callable[[Any], bool] = _in_effect


def _n(reason: str) -> SynapseKey:
    return SynapseKey("no_effect", reason)


def _u(reason: str) -> SynapseKey:
    return SynapseKey("unsupported", reason)


def _r(reason: str, refuse_if: Callable[[Any], bool] = _in_effect) -> SynapseKey:
    return SynapseKey("refused", reason, refuse_if)


_LEGACY_LISTENER = "a legacy listener key; hs listens on what `listeners` says"
_WORKER_FILE = "a key of Synapse's per-worker files; hs declares workers under `workers:` in one file"
_THREEPID = "hs has no email or phone (3PID) identifiers"
_MAU = "hs has no monthly-active-user limits"
_RATE = "hs has no such rate limit"
_SSO = "hs has no single sign-on: its users could not log in, and password login would stand in for it"

# Keys not in `HomeserverConfig` (Synapse's keys hs has are read from the model: see `classify`).
SYNAPSE_KEYS: dict[str, SynapseKey] = {
    # -- no effect on hs -------------------------------------------------------------------------------
    "report_stats": _n("hs sends no usage statistics"),
    "report_stats_endpoint": _n("hs sends no usage statistics"),
    "suppress_key_server_warning": _n("hs prints no warning about matrix.org as key server"),
    "enable_metrics": _n("metrics are served by a `type: metrics` listener"),
    "metrics_flags": _n("hs's metrics have no optional families"),
    "caches": _n("hs sizes its caches itself"),
    "event_cache_size": _n("hs sizes its caches itself"),
    "gc_min_interval": _n("hs leaves garbage collection to Python's defaults"),
    "gc_thresholds": _n("hs leaves garbage collection to Python's defaults"),
    "soft_file_limit": _n("hs does not raise the open-file limit; set it in the service manager"),
    "use_frozen_dicts": _n("a Synapse debugging switch"),
    "replication_torture_level": _n("a Synapse debugging switch"),
    "daemonize": _n("hs runs in the foreground; use a service manager"),
    "print_pidfile": _n("hs writes `pid_file` and prints nothing about it"),
    "no_redirect_stdio": _n("hs does not redirect stdout and stderr into the log"),
    "log_file": _n("a legacy key Synapse ignores too; `log_config` says where logs go"),
    "background_updates": _n("hs has no background updates to pace"),
    "task_scheduler": _n("hs has no Synapse task scheduler"),
    "macaroon_secret_key_path": _n("hs's tokens are not macaroons"),
    "form_secret_path": _n("hs serves no forms signed with it"),
    "key_server_signing_keys_path": _n("hs signs notary answers with its own signing key"),
    "server_context": _n("hs adds no server context to logs"),
    "gzip_responses": _n("compression is left to the reverse proxy"),
    "user_agent_suffix": _u("hs's outbound User-Agent is fixed"),
    "worker_log_config": _n("hs instances share `log_config`"),
    "worker_daemonize": _n("hs runs in the foreground; use a service manager"),
    "worker_pid_file": _n("each hs instance uses `pid_file`"),
    "worker_manhole": _n("hs has no manhole"),
    "manhole": _n("hs has no manhole (Twisted's debugging console)"),
    "manhole_settings": _n("hs has no manhole (Twisted's debugging console)"),
    # -- Synapse features hs lacks: accepted with a notice -------------------------------------------
    "bind_host": _u(_LEGACY_LISTENER),
    "bind_port": _u(_LEGACY_LISTENER),
    "unsecure_port": _u(_LEGACY_LISTENER),
    "no_tls": _u(_LEGACY_LISTENER),
    "metrics_port": _u(_LEGACY_LISTENER + " (a `type: metrics` listener)"),
    "metrics_bind_host": _u(_LEGACY_LISTENER + " (a `type: metrics` listener)"),
    "worker_app": _u(_WORKER_FILE),
    "worker_name": _u(_WORKER_FILE),
    "worker_listeners": _u(_WORKER_FILE),
    "worker_main_http_uri": _u(_WORKER_FILE),
    "worker_replication_host": _u(_WORKER_FILE),
    "worker_replication_http_port": _u(_WORKER_FILE),
    "worker_replication_http_tls": _u(_WORKER_FILE),
    "worker_replication_port": _u(_WORKER_FILE),
    "sentry": _u("hs reports no errors to Sentry"),
    "opentracing": _u("hs has no OpenTracing"),
    "stats": _u("hs keeps no room and user statistics tables"),
    "user_types": _u("hs has no custom user types"),
    "email": _u("hs sends no email"),
    "account_threepid_delegates": _u(_THREEPID),
    "default_identity_server": _u(_THREEPID),
    "enable_3pid_lookup": _u(_THREEPID),
    "disable_msisdn_registration": _u(_THREEPID),
    "request_token_inhibit_3pid_errors": _u(_THREEPID),
    "trust_identity_server_for_password_resets": _u(_THREEPID),
    "invite_3pid_guest": _u(_THREEPID),
    "next_link_domain_whitelist": _u(_THREEPID),
    "enable_registration_token_3pid_bypass": _u(_THREEPID),
    "allowed_local_3pids": _u(_THREEPID),
    "enable_3pid_changes": _u(_THREEPID),
    "recaptcha_public_key": _u("hs has no CAPTCHA"),
    "recaptcha_private_key": _u("hs has no CAPTCHA"),
    "recaptcha_public_key_path": _u("hs has no CAPTCHA"),
    "recaptcha_private_key_path": _u("hs has no CAPTCHA"),
    "recaptcha_siteverify_api": _u("hs has no CAPTCHA"),
    "limit_usage_by_mau": _u(_MAU),
    "max_mau_value": _u(_MAU),
    "mau_trial_days": _u(_MAU),
    "mau_appservice_trial_days": _u(_MAU),
    "mau_limit_alerting": _u(_MAU),
    "mau_limit_reserved_threepids": _u(_MAU),
    "mau_stats_only": _u(_MAU),
    "auto_join_rooms": _u("hs joins new users to no rooms"),
    "auto_join_rooms_for_guests": _u("hs joins new users to no rooms"),
    "autocreate_auto_join_rooms": _u("hs joins new users to no rooms"),
    "autocreate_auto_join_rooms_federated": _u("hs joins new users to no rooms"),
    "autocreate_auto_join_room_preset": _u("hs joins new users to no rooms"),
    "auto_join_mxid_localpart": _u("hs joins new users to no rooms"),
    "auto_accept_invites": _u("hs accepts no invites on users' behalf"),
    "allow_underscore_prefixed_localpart": _u("hs's user ID rules are fixed"),
    "inhibit_user_in_use_error": _u("hs answers M_USER_IN_USE as the spec says"),
    "disable_registration": _u("a legacy key; `enable_registration` (off by default) decides"),
    "dont_notify_new_devices_for": _u("hs sends no new-device notices"),
    "ui_auth": _u("hs asks for re-authentication every time (stricter than a session_timeout)"),
    "login_via_existing_session": _u("hs has no login with an existing session (MSC3882)"),
    "allowed_avatar_mimetypes": _u("hs does not check avatar types"),
    "max_avatar_size": _u("hs does not check avatar sizes"),
    "redaction_allowed_period": _u("hs has no admin redaction window"),
    "max_event_delay_duration": _u("hs has no delayed events (MSC4140)"),
    "forget_rooms_on_leave": _u("hs does not forget rooms on leave"),
    "exclude_rooms_from_sync": _u("hs syncs every joined room"),
    "exclude_rooms_from_presence": _u("hs shares presence in every room"),
    "filter_timeline_limit": _u("hs's filter limits are fixed"),
    "enable_search": _u("hs always serves /search"),
    "serve_server_wellknown": _u("serve /.well-known/matrix/server from the reverse proxy"),
    "extra_well_known_client_content": _u("hs's /.well-known/matrix/client has fixed content"),
    "web_client_location": _u("hs serves no web client"),
    "admin_contact": _u("hs names no admin contact in errors"),
    "templates": _u("hs renders no HTML templates"),
    "sso": _u("hs has no single sign-on"),
    "hs_disabled_message": _u("hs cannot be disabled by config"),
    "limit_remote_rooms": _u("hs does not limit joins by room complexity"),
    "include_profile_updates_in_sync": _u("hs's profile updates in sync are fixed"),
    "use_account_validity_in_account_status": _u("hs has no account validity"),
    "use_appservice_legacy_authorization": _u("hs takes an appservice's token in the header only (stricter)"),
    "track_appservice_user_ips": _u("hs does not record application services' addresses"),
    "track_puppeted_user_ips": _u("hs does not record puppeted users' addresses"),
    "federation_metrics_domains": _u("hs has no per-destination federation metrics"),
    "federation_whitelist_endpoint_enabled": _u("hs does not publish its federation whitelist"),
    "federation_certificate_verification_whitelist": _u(
        "hs verifies every server's certificate (stricter)"),
    "use_insecure_ssl_client_just_for_testing_do_not_use": _u("hs verifies certificates (stricter)"),
    "allow_device_name_lookup_over_federation": _u("hs shares no device names over federation"),
    "require_membership_for_aliases": _u("hs's alias rules are fixed"),
    "room_prejoin_state": _u("hs's stripped state for invites is fixed"),
    "room_invite_state_types": _u("hs's stripped state for invites is fixed"),
    "cleanup_extremities_with_dummy_events": _u("hs sends no dummy events"),
    "dummy_events_threshold": _u("hs sends no dummy events"),
    "push_rules": _u("hs's push rule set is fixed"),
    "matrix_rtc": _u("hs has no MatrixRTC transports"),
    # `presence.enabled` is read as `use_presence` (see `screen`); the timers are hs's own.
    "presence": _u("hs's presence timers are fixed"),
    "rc_message_burst_count": _u("a legacy key; `rc_message` sets the limit"),
    "rc_messages_per_second": _u("a legacy key; `rc_message` sets the limit"),
    **{key: _u(_RATE) for key in (
        "rc_3pid_validation", "rc_admin_redaction", "rc_delayed_event_mgmt", "rc_federation", "rc_invites",
        "rc_joins_per_room", "rc_key_requests", "rc_media_create", "rc_presence", "rc_profile",
        "rc_registration_token_validity", "rc_reports", "rc_room_creation", "rc_third_party_invite",
        "rc_user_directory", "federation_rc_concurrent", "federation_rc_reject_limit",
        "federation_rc_sleep_delay", "federation_rc_sleep_limit", "federation_rc_window_size",
        "federation_rr_transactions_per_room_per_second")},
    # -- refused while in effect: ignoring them would change security or data -------------------------
    "oidc_providers": _r(_SSO),
    "oidc_config": _r(_SSO),
    "saml2_config": _r(_SSO),
    "cas_config": _r(_SSO),
    "jwt_config": _r(_SSO),
    "ldap_config": _r("hs has no LDAP login; its users could not log in, or passwords would be checked "
                      "against the local database instead"),
    "password_providers": _r("hs has no password provider modules; passwords would be checked against "
                             "the local database instead"),
    "experimental_features": _r(
        "hs does not delegate authentication (MSC3861, now `matrix_authentication_service`): it would "
        "accept its own logins instead; the "
        "section's other switches do not apply to hs", _delegated_auth),
    "matrix_authentication_service": _r("hs does not delegate authentication; it would accept its own "
                                        "logins instead"),
    "password_config": _r("hs enforces no password policy and cannot turn password login off: weak "
                          "passwords or password logins the admin forbade would be accepted",
                          _password_policy),
    "account_validity": _r("hs has no account expiry: expired accounts would keep working"),
    "session_lifetime": _r("hs's access tokens do not expire: sessions would outlive it"),
    "refresh_token_lifetime": _r("hs's tokens do not expire: sessions would outlive it"),
    "refreshable_access_token_lifetime": _r("hs's tokens do not expire: sessions would outlive it"),
    "nonrefreshable_access_token_lifetime": _r("hs's tokens do not expire: sessions would outlive it"),
    "delete_stale_devices_after": _r("hs does not delete stale devices: their tokens would stay valid"),
    "registrations_require_3pid": _r("hs has no email or phone: registration would not require one"),
    "enable_registration_captcha": _r("hs has no CAPTCHA: registration would be open to bots", _is_true),
    "user_consent": _r("hs tracks no consent to a privacy policy: users would not be asked"),
    "hs_disabled": _r("hs cannot be disabled by config: it would serve users", _is_true),
    "block_non_admin_invites": _r("hs does not block invites: users could invite", _is_true),
    "restrict_public_rooms_to_local_users": _r(
        "hs's room directory rules are fixed: the directory would be shown to other servers", _is_true),
    "limit_profile_requests_to_users_who_share_rooms": _r(
        "hs shows profiles to any local user: profiles would be shown beyond shared rooms", _is_true),
    "include_profile_data_on_invite": _r(
        "hs puts the inviter's profile into invites: it would be shared", _is_false),
    "allow_per_room_profiles": _r("hs allows per-room display names and avatars", _is_false),
    "enable_set_displayname": _r("hs lets users change display names", _is_false),
    "enable_set_avatar_url": _r("hs lets users change avatars", _is_false),
    "enable_room_list_search": _r("hs always serves the room directory: it would be searchable", _is_false),
    "user_directory": _r("hs's user directory cannot be turned off: users would be searchable", _disables),
    "push": _r("hs always puts message content into push notifications: it would reach the push "
               "gateway", _push_without_content),
    "encryption_enabled_by_default_for_room_type": _r(
        "hs does not turn encryption on by default: new rooms would be unencrypted", _encryption_default),
    "default_power_level_content_override": _r(
        "hs uses the spec's default power levels: new rooms would give wider permissions"),
    "alias_creation_rules": _r("hs applies no alias creation rules: any user could create aliases"),
    "room_list_publication_rules": _r("hs applies no publication rules: any user could publish rooms"),
    "spam_checker": _r("hs loads no modules: what the spam checker blocks would go through"),
    "third_party_event_rules": _r("hs loads no modules: what the rules block would go through"),
    "modules": _r("hs loads no Synapse modules: what they enforce would not be enforced"),
    "retention": _r("hs has no message retention: messages would be kept past the policy"),
    "redaction_retention_period": _r("hs keeps the content of redacted events: it would be kept past "
                                     "the period", lambda v: v is not None),
    "forgotten_room_retention_period": _r("hs keeps forgotten rooms: they would be kept past the period"),
    "user_ips_max_age": _r("hs does not expire client addresses: they would be kept past the age"),
    "enable_ephemeral_messages": _r("hs has no self-destructing messages: they would be kept", _is_true),
    "backup_media_store_path": _r("hs keeps no media backup copy: uploads would not be backed up"),
    "synchronous_backup_media_store": _r("hs keeps no media backup copy", _is_true),
    "enable_local_media_storage": _r(
        "hs always stores media in media_store_path: media would be written where it should not", _is_false),
    "outbound_federation_restricted_to": _r(
        "hs sends federation from every instance: requests would leave from other addresses"),
    "http_proxy": _r("hs uses no outbound HTTP proxy: requests would bypass it"),
    "https_proxy": _r("hs uses no outbound HTTP proxy: requests would bypass it"),
    "no_proxy_hosts": _u("hs uses no outbound HTTP proxy"),
    "signing_key": _r("hs reads its key from `signing_key_path`: it would sign with another key"),
    "perspectives": _r("a legacy form of `trusted_key_servers`: hs would trust matrix.org instead"),
    "database_path": _r("a legacy key: hs would use another database (give `database: {name: sqlite3, "
                        "args: {database: ...}}`)"),
    "databases": _r("hs keeps all data in one `database`: the split would be ignored"),
}


# Keys of Synapse's sections that hs's models do not have, by section: `listeners` (also each worker's
# `listeners`), `database` and `redis`. Screened as the top-level keys are, named by their dotted path.
SECTION_KEYS: dict[str, dict[str, SynapseKey]] = {
    "listeners": {
        "tag": _n("a Synapse metrics label"),
        "request_id_header": _u("hs names requests itself"),
        "additional_resources": _u("hs loads no Synapse modules' resources"),
        "http_options": _u("hs's HTTP options are fixed"),
        "mode": _u("hs has no Unix socket listeners"),
        "path": _r("hs has no Unix socket listeners: it would not listen where the proxy connects"),
    },
    "database": {
        "allow_unsafe_locale": _n("hs does not check the database's locale"),
        "txn_limit": _n("hs does not recycle connections after a number of transactions"),
        "data_stores": _r("hs keeps all data in one database: the split would be ignored"),
    },
    "redis": {
        "path": _r("hs connects to Redis over TCP: it would connect to `host` instead of the socket"),
        "password_path": _r("hs reads `password` only: it would connect without the password"),
        "use_tls": _r("hs connects to Redis without TLS: replication would travel in clear", _is_true),
        "certificate_file": _r("hs connects to Redis without TLS"),
        "private_key_file": _r("hs connects to Redis without TLS"),
        "ca_file": _r("hs connects to Redis without TLS"),
        "ca_path": _r("hs connects to Redis without TLS"),
    },
}


@dataclass
class Screened:
    """What `screen` made of a config's top-level keys."""

    data: dict[str, Any]  # the keys hs reads
    notices: list[str]  # one line per accepted Synapse key hs ignores
    problems: list[str]  # refused keys and typos, one line each naming the key


def classify(key: str, hs_fields: Iterable[str]) -> str:
    """`hs`, `no_effect`, `unsupported`, `refused` or `unknown`."""
    if key in set(hs_fields):
        return "hs"
    entry = SYNAPSE_KEYS.get(key)
    return entry.kind if entry else "unknown"


def suggest(key: str, known: Iterable[str]) -> str | None:
    """The closest known key to a typo (difflib's ratio), or None when nothing is close."""
    matches = difflib.get_close_matches(key, sorted(set(known)), n=1, cutoff=0.75)
    return matches[0] if matches else None


def unknown_key_problems(where: str, key: str, known: Iterable[str]) -> list[str]:
    """`<where>: unknown key`, then `<where>: did you mean `<closest>`?` when a known key is close: two
    lines, each naming the key, so that the first reads the same for every unknown key."""
    close = suggest(key, known)
    return [f"{where}: unknown key"] + ([f"{where}: did you mean `{close}`?"] if close else [])


def _judge(path: str, entry: SynapseKey, value: Any, notices: list[str], problems: list[str]) -> None:
    """The notice or the problem for one Synapse key hs does not read."""
    if entry.kind == "no_effect":
        notices.append(f"Synapse option `{path}` has no effect on hs ({entry.reason}); ignored")
    elif entry.kind == "refused" and entry.refuse_if(value):
        problems.append(f"{path}: Synapse option `{path}` is not supported by hs, and ignoring it would "
                        f"change security or data ({entry.reason}); remove it or turn it off")
    elif entry.kind == "refused":
        notices.append(f"Synapse option `{path}` is not supported by hs; ignored (as given, it would not "
                       "change security or data)")
    else:
        notices.append(f"Synapse option `{path}` is not supported by hs ({entry.reason}); ignored")


def _screen_section(path: str, section: Any, table: dict[str, SynapseKey], notices: list[str],
                    problems: list[str]) -> Any:
    """The section without the Synapse keys of `table` (judged); other keys are left to the model."""
    if not isinstance(section, dict):
        return section
    kept = {}
    for key, value in section.items():
        entry = table.get(key)
        if entry is None:
            kept[key] = value
        else:
            _judge(f"{path}.{key}", entry, value, notices, problems)
    return kept


def _screen_listeners(path: str, listeners: Any, notices: list[str], problems: list[str]) -> Any:
    if not isinstance(listeners, list):
        return listeners
    return [_screen_section(f"{path}.{i}", item, SECTION_KEYS["listeners"], notices, problems)
            for i, item in enumerate(listeners)]


def screen(data: dict[str, Any], hs_fields: Iterable[str]) -> Screened:
    """Split a config's keys into those hs reads, Synapse keys it ignores (a notice each) and those it
    refuses (a problem each: refused Synapse options in effect, and unknown top-level keys). Top-level
    keys, and the Synapse keys of `SECTION_KEYS`; other nested keys are the models' to judge."""
    fields = set(hs_fields)
    kept: dict[str, Any] = {}
    notices: list[str] = []
    problems: list[str] = []
    for key, value in data.items():
        if key in fields:
            if key == "listeners":
                value = _screen_listeners(key, value, notices, problems)
            elif key in ("database", "redis"):
                value = _screen_section(key, value, SECTION_KEYS[key], notices, problems)
            elif key == "workers" and isinstance(value, dict):
                value = {name: {**worker, "listeners": _screen_listeners(f"workers.{name}.listeners",
                                                                         worker["listeners"], notices, problems)}
                         if isinstance(worker, dict) and "listeners" in worker else worker
                         for name, worker in value.items()}
            kept[key] = value
            continue
        entry = SYNAPSE_KEYS.get(key)
        if entry is None:
            problems.extend(unknown_key_problems(key, key, fields | set(SYNAPSE_KEYS)))
        elif key == "presence" and isinstance(value, dict):
            _presence(value, kept, notices)
        else:
            _judge(key, entry, value, notices, problems)
    return Screened(kept, notices, problems)


def _presence(section: dict[str, Any], kept: dict[str, Any], notices: list[str]) -> None:
    """Synapse's `presence.enabled` (which wins over `use_presence`, as in Synapse) turns hs's presence
    on or off; `untracked` (presence set by something else) is on. The other keys are notices."""
    enabled = section.get("enabled")
    if enabled is not None:
        kept["use_presence"] = bool(enabled)
    for key, value in section.items():
        if key != "enabled":
            _judge(f"presence.{key}", SYNAPSE_KEYS["presence"], value, notices, [])
