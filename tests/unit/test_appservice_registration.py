"""Application service registration files: parsed as Synapse reads them, every problem naming the file
and the key, conflicts between services refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hs.config import ConfigError, parse_config

REG: dict[str, Any] = {
    "id": "bridge", "url": "http://127.0.0.1:29300", "as_token": "as-1", "hs_token": "hs-1",
    "sender_localpart": "bridgebot", "rate_limited": False, "receive_ephemeral": True,
    "org.matrix.msc3202": True, "io.element.msc4190": True, "protocols": ["irc"],
    "namespaces": {"users": [{"regex": "@irc_.*:example.org", "exclusive": True}],
                   "aliases": [{"regex": "#irc_.*:example.org", "exclusive": False}],
                   "rooms": [{"regex": "!bridged.*", "exclusive": False}]},
    "de.extra.bridge-specific": {"kept": True},
}


def _load(tmp_path: Path, *regs: Any) -> Any:
    names = []
    for i, reg in enumerate(regs):
        (tmp_path / f"r{i}.yaml").write_text(yaml.safe_dump(reg))
        names.append(f"r{i}.yaml")
    return parse_config({"server_name": "example.org", "app_service_config_files": names},
                        config_dir=str(tmp_path))


def test_a_registration_is_read_with_synapse_semantics(tmp_path: Path) -> None:
    service = _load(tmp_path, REG).app_services[0]
    assert (service.id, service.sender, service.url) == ("bridge", "@bridgebot:example.org", "http://127.0.0.1:29300")
    assert not service.rate_limited and service.receive_ephemeral and service.msc3202 and service.msc4190
    assert service.is_exclusive_user("@irc_alice:example.org") and service.is_exclusive_user(service.sender)
    assert not service.is_interested_in_user("@alice:example.org")
    # Anchored at the start only, as Synapse's re.match: a suffix after the regex still matches.
    assert service.is_interested_in_alias("#irc_chan:example.org.extra")
    assert not service.is_exclusive_alias("#irc_chan:example.org")  # not exclusive
    assert service.is_interested_in_room_id("!bridgedroom:example.org")
    # A null url (a service that only acts as a client) and the unstable MSC2409 key.
    other = _load(tmp_path, {**REG, "url": None, "receive_ephemeral": None,
                             "de.sorunome.msc2409.push_ephemeral": True}).app_services[0]
    assert other.url is None and other.receive_ephemeral


@pytest.mark.parametrize(("change", "message"), [
    ({"as_token": None}, "as_token: required"),
    ({"url": "ftp://x"}, "url: must be an http"),
    ({"sender_localpart": "@bot:example.org"}, "sender_localpart: a localpart"),
    ({"rate_limited": "no"}, "rate_limited: must be true or false"),
    ({"namespaces": {"users": [{"regex": "(", "exclusive": True}]}}, "namespaces.users[0].regex: not a valid"),
    ({"namespaces": {"rooms": [{"regex": "!a", "exclusive": "yes"}]}}, "namespaces.rooms[0].exclusive"),
    ({"ip_range_whitelist": ["not-a-range"]}, "ip_range_whitelist: 'not-a-range'"),
])
def test_bad_registrations_name_the_file_and_key(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    reg = {**REG, **change}
    reg = {k: v for k, v in reg.items() if v is not None or k == "url"}
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, reg)
    assert "app_service_config_files: " in str(e.value) and "r0.yaml" in str(e.value) and message in str(e.value)


def test_missing_files_and_conflicting_services_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"server_name": "example.org", "app_service_config_files": ["nope.yaml"]},
                     config_dir=str(tmp_path))
    assert "nope.yaml: cannot read the registration file" in str(e.value)
    second = {**REG, "id": "other", "as_token": "as-2", "hs_token": "hs-2", "sender_localpart": "irc_bot"}
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, REG, second)
    text = str(e.value)
    assert "namespaces.users: both claim '@irc_.*:example.org' exclusively" in text
    assert "sender @irc_bot:example.org is in" in text
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, REG, {**REG, "namespaces": {}})
    assert "id: both are 'bridge'" in str(e.value) and "as_token: both use the same token" in str(e.value)
