"""Server keys between hs and a real Synapse: hs fetching Synapse's keys directly and checking what
Synapse signed with them; hs asking Synapse as its notary (trusted_key_servers) for a third server's
keys when that server is down; and hs as the notary, for a client and for a second Synapse that trusts
it as its key server."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest

from hs.events.room_versions import KNOWN_ROOM_VERSIONS
from hs.events.signing import decode_verify_key_base64, verify_signed_json
from hs.federation.keys import InvalidServerSignature
from hs.util import now_ms
from tests.federation.client import unique, user
from tests.federation.hs_server import FederatingHs
from tests.federation.synapse import SynapseServer, create_synapse_database
from tests.federation.tls import TestCA
from tests.services import drop_database


async def published_keys(server: Any) -> dict[str, Any]:
    """GET /_matrix/key/v2/server of a server, unauthenticated, as any client may."""
    async with server.client() as c:
        status, body = await c.request("GET", "/_matrix/key/v2/server", auth=False)
    assert status == 200, body
    assert body["server_name"] == server.server_name, body
    keys: dict[str, Any] = body
    return keys


def only_key(keys: dict[str, Any]) -> tuple[str, str]:
    (key_id, entry), = keys["verify_keys"].items()
    return key_id, str(entry["key"])


def hs_key(server: FederatingHs) -> tuple[str, str]:
    return server.hs.signing_key.key_id, server.hs.signing_key.verify_key_base64


def check_signed(obj: dict[str, Any], server_name: str, key_id: str, key: str) -> None:
    verify_signed_json(obj, server_name, key_id, decode_verify_key_base64(key))


async def prime_notary(notary: Any, server: FederatingHs) -> None:
    """Ask `notary` for `server`'s key by its ID while `server` is up: Synapse fetches a key it does
    not hold only when asked for it by ID, and keeps it."""
    key_id = server.hs.signing_key.key_id
    async with notary.client() as c:
        status, body = await c.request("POST", "/_matrix/key/v2/query", {
            "server_keys": {server.server_name: {key_id: {"minimum_valid_until_ts": now_ms()}}}}, auth=False)
    assert status == 200, body
    assert [(e["server_name"], list(e["verify_keys"])) for e in body["server_keys"]] == [
        (server.server_name, [key_id])], body


async def test_hs_fetches_synapse_keys_and_verifies_what_synapse_signed(make_fed_hs: Any, synapse: Any) -> None:
    local = await make_fed_hs()
    published = await published_keys(synapse)
    key_id, key = only_key(published)
    keyring = local.hs.keyring
    found = await keyring.get_server_keys(synapse.server_name, [key_id], now_ms())
    assert key_id in found, found
    assert found[key_id].verify_key.encode() == decode_verify_key_base64(key).encode()
    stored = await keyring.store.get_keys(synapse.server_name)
    assert [(k.key_id, k.from_server) for k in stored] == [(key_id, synapse.server_name)]
    # Synapse-signed JSON verifies with them: its key response, and an event it built and signed.
    await keyring.verify_json(synapse.server_name, published, now_ms())
    bob = await user(synapse, unique("bob"))
    room_id = await bob.create_room(preset="public_chat", name="signed by synapse", room_version="10")
    status, sync = await bob.request("GET", "/sync", params={
        "timeout": "0", "filter": json.dumps({"event_format": "federation", "room": {"rooms": [room_id]}})})
    assert status == 200, sync
    events = sync["rooms"]["join"][room_id]["state"]["events"] + sync["rooms"]["join"][room_id]["timeline"]["events"]
    create = next(e for e in events if e["type"] == "m.room.create")
    pdu = {k: v for k, v in create.items() if k not in ("event_id", "unsigned")}
    rv = KNOWN_ROOM_VERSIONS["10"]
    await keyring.verify_event_signatures(pdu, rv)
    tampered = copy.deepcopy(pdu)
    tampered["content"]["creator"] = "@mallory:example.org"  # kept by redaction in v10: signed
    with pytest.raises(InvalidServerSignature):
        await keyring.verify_event_signatures(tampered, rv)


async def test_hs_gets_a_down_servers_keys_through_synapse_as_notary(make_fed_hs: Any, synapse: Any) -> None:
    synapse_key_id, synapse_key = only_key(await published_keys(synapse))
    third = await make_fed_hs()
    third_key_id, third_key = hs_key(third)
    # Synapse, asked as a notary while the third server is up, fetches and keeps its keys.
    await prime_notary(synapse, third)
    await third.stop()  # from now on only the notary can answer for it
    local = await make_fed_hs(trusted_key_servers=[
        {"server_name": synapse.server_name, "verify_keys": {synapse_key_id: synapse_key}}])
    keyring = local.hs.keyring
    found = await keyring.get_server_keys(third.server_name, [third_key_id], now_ms())
    assert third_key_id in found, (found, local.log_tail(20))
    assert found[third_key_id].verify_key.encode() == decode_verify_key_base64(third_key).encode()
    stored = await keyring.store.get_keys(third.server_name)
    assert [(k.key_id, k.from_server) for k in stored] == [(third_key_id, synapse.server_name)]
    # The stored response is the third server's own, self-signed (the notary's signature dropped).
    key_json = json.loads(stored[0].key_json)
    assert set(key_json["signatures"]) == {third.server_name}
    check_signed(key_json, third.server_name, third_key_id, third_key)


async def test_hs_gets_keys_through_synapse_notary_only_if_synapse_signed(make_fed_hs: Any, synapse: Any) -> None:
    """A notary answer not signed with the configured key (here: a wrong key configured) is refused:
    with the third server down, its keys cannot be had."""
    synapse_key_id, _ = only_key(await published_keys(synapse))
    third = await make_fed_hs()
    third_key_id, _ = hs_key(third)
    await prime_notary(synapse, third)
    await third.stop()
    wrong_key = hs_key(third)[1]  # a valid ed25519 key, not Synapse's
    local = await make_fed_hs(trusted_key_servers=[
        {"server_name": synapse.server_name, "verify_keys": {synapse_key_id: wrong_key}}])
    found = await local.hs.keyring.get_server_keys(third.server_name, [third_key_id], now_ms())
    assert found == {}
    assert await local.hs.keyring.store.get_keys(third.server_name) == []


async def test_hs_as_notary_for_synapse_keys(make_fed_hs: Any, synapse: Any) -> None:
    notary = await make_fed_hs()
    synapse_key_id, synapse_key = only_key(await published_keys(synapse))
    notary_key_id, notary_key = hs_key(notary)
    async with notary.client() as c:
        status, one = await c.request("GET", f"/_matrix/key/v2/query/{quote(synapse.server_name)}", auth=False)
        assert status == 200, one
        status, many = await c.request("POST", "/_matrix/key/v2/query", {
            "server_keys": {synapse.server_name: {synapse_key_id: {"minimum_valid_until_ts": now_ms()}}}},
            auth=False)
        assert status == 200, many
    for answer in (one, many):
        (entry,) = answer["server_keys"]
        assert entry["server_name"] == synapse.server_name
        assert entry["verify_keys"] == {synapse_key_id: {"key": synapse_key}}
        assert set(entry["signatures"]) == {synapse.server_name, notary.server_name}
        check_signed(entry, synapse.server_name, synapse_key_id, synapse_key)
        check_signed(entry, notary.server_name, notary_key_id, notary_key)


async def test_second_synapse_trusts_hs_as_its_key_server(make_fed_hs: Any, synapse_python: Path,
                                                          federation_ca: TestCA, pg_base_dsn: str,
                                                          tmp_path: Path) -> None:
    """A Synapse whose trusted_key_servers is an hs asks it first for other servers' keys: a request
    from a third server (an hs) is checked with keys Synapse stored as coming from the notary."""
    notary = await make_fed_hs()
    third = await make_fed_hs()
    notary_key_id, notary_key = hs_key(notary)
    dsn = await create_synapse_database(pg_base_dsn)
    data_dir = tmp_path / "synapse2"
    second = SynapseServer(synapse_python, data_dir, dsn, federation_ca.issue(data_dir / "tls"), {
        "trusted_key_servers": [{"server_name": notary.server_name,
                                 "verify_keys": {notary_key_id: notary_key}}]})
    try:
        await asyncio.to_thread(second.start)
        carol = await user(second, unique("carol"))
        # A signed request from the third server: Synapse needs its key to check the X-Matrix header.
        profile = await third.hs.federation_client.get_json(
            second.server_name, "/_matrix/federation/v1/query/profile", {"user_id": carol.user_id})
        assert isinstance(profile, dict), profile
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT key_id, from_server FROM server_keys_json WHERE server_name = $1",
                                    third.server_name)
        finally:
            await conn.close()
        assert {(r["key_id"], r["from_server"]) for r in rows} == {(third.hs.signing_key.key_id,
                                                                     notary.server_name)}, second.log_tail(30)
        # The notary fetched them from the third server itself, and keeps them.
        stored = await notary.hs.keyring.store.get_keys(third.server_name)
        assert [(k.key_id, k.from_server) for k in stored] == [(third.hs.signing_key.key_id, third.server_name)]
    finally:
        await asyncio.to_thread(second.stop)
        await drop_database(dsn)
