"""Synapse's media admin API over real HTTP: quarantine (one, a room's, a user's; protected media
spared; downloads and thumbnails refused until released), protection, media info, listing a user's
media (pages, orders), deleting (one, by date and size, a user's; files kept while other rows share
the bytes, avatars kept), purging cached remote media, and who may call it (admins only)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.harness import Client, TestHomeServer, admin, ok, user
from tests.media_http import media_request, upload_media

ADMIN = "/_synapse/admin/v1"


@pytest.fixture
async def server(make_server: Any, engine: str) -> TestHomeServer:
    srv: TestHomeServer = await make_server(engine)
    return srv


async def upload(srv: TestHomeServer, client: Client, data: bytes, content_type: str = "text/plain",
                 filename: str | None = None) -> str:
    """Upload through the media API; the media ID."""
    return (await upload_media(srv, client, data, content_type, filename)).rpartition("/")[2]


async def download_status(srv: TestHomeServer, client: Client, media_id: str, server_name: str | None = None) -> int:
    name = server_name or srv.config.server_name
    path = f"/_matrix/client/v1/media/download/{name}/{media_id}"
    return (await media_request(srv, "GET", path, client.token))[0]


async def thumbnail_status(srv: TestHomeServer, client: Client, media_id: str) -> int:
    path = f"/_matrix/client/v1/media/thumbnail/{srv.config.server_name}/{media_id}"
    params = {"width": "32", "height": "32", "method": "crop"}
    return (await media_request(srv, "GET", path, client.token, params=params))[0]


def png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(out, "PNG")
    return out.getvalue()


def store_root(srv: TestHomeServer) -> Path:
    return srv.hs.config.resolve_path(srv.hs.config.media_store_path)


def content_file(srv: TestHomeServer, sha256: str) -> Path:
    return store_root(srv) / "content" / sha256[:2] / sha256[2:4] / sha256


async def sha_of(srv: TestHomeServer, media_id: str) -> str:
    return str(await srv.hs.db.fetchval("SELECT sha256 FROM local_media WHERE media_id = $1", media_id))


async def add_remote(srv: TestHomeServer, origin: str, media_id: str, data: bytes, last_access_ts: int,
                     quarantined_by: str | None = None) -> str:
    """Cached remote media, as the remote fetcher would leave it: the file in the store and its row."""
    import hashlib

    from hs.media.storage import content_key

    sha256 = hashlib.sha256(data).hexdigest()
    files = srv.hs.media_files
    temp = files.local.new_temp_path()
    temp.write_bytes(data)
    await files.adopt(content_key(sha256), temp, remote=True)
    await srv.hs.media.store.add_remote(origin, media_id, "application/octet-stream", None, len(data), sha256,
                                        True)
    await srv.hs.db.execute("UPDATE remote_media_cache SET last_access_ts = $3, created_ts = $3,"
                            " quarantined_by = $4 WHERE media_origin = $1 AND media_id = $2",
                            origin, media_id, last_access_ts, quarantined_by)
    return sha256


async def send(client: Client, room_id: str, content: dict[str, Any], event_type: str = "m.room.message") -> None:
    status, data = await client.request("PUT", f"/rooms/{quote(room_id)}/send/{event_type}/{time.time_ns()}",
                                        content)
    assert status == 200, data


# -- who may call ------------------------------------------------------------------------------------------
async def test_non_admins_are_refused(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    media_id = await upload(server, alice, b"mine")
    name = server.config.server_name
    for method, path in [("GET", f"/media/{name}/{media_id}"), ("DELETE", f"/media/{name}/{media_id}"),
                         ("POST", f"/media/quarantine/{name}/{media_id}"), ("POST", f"/media/protect/{media_id}"),
                         ("GET", f"/users/{quote(alice.user_id or '')}/media"),
                         ("POST", "/purge_media_cache?before_ts=40000000000"),
                         ("POST", "/media/delete?before_ts=40000000000"),
                         ("GET", f"/room/{quote('!x:' + name)}/media")]:
        status, data = await alice.request(method, ADMIN + path)
        assert (status, data.get("errcode")) == (403, "M_FORBIDDEN"), (method, path, data)
        status, data = await alice.request(method, ADMIN + path, auth=False)
        assert status == 401, (method, path, data)
    assert await download_status(server, alice, media_id) == 200


# -- quarantine ------------------------------------------------------------------------------------------------
async def test_quarantine_one_and_release(server: TestHomeServer) -> None:
    mod = await admin(server)
    alice = await user(server, "alice")
    image = await upload(server, alice, png((200, 10, 10)), "image/png")
    same_bytes = await upload(server, alice, png((200, 10, 10)), "image/png")
    other = await upload(server, alice, b"other")
    name = server.config.server_name
    thumbnails_served = await thumbnail_status(server, alice, image) == 200

    assert await ok(mod, "POST", f"{ADMIN}/media/quarantine/{name}/{image}", {}) == {}
    assert await download_status(server, alice, image) == 404
    # Quarantine applies to the bytes: another upload of them is quarantined too.
    assert await download_status(server, alice, same_bytes) == 404
    assert await download_status(server, alice, other) == 200
    assert await thumbnail_status(server, alice, image) == 404
    info = (await ok(mod, "GET", f"{ADMIN}/media/{name}/{image}"))["media_info"]
    assert info["quarantined_by"] == mod.user_id
    assert {"media_origin", "user_id", "media_id", "media_type", "media_length", "upload_name", "created_ts",
            "filesystem_id", "url_cache", "last_access_ts", "quarantined_by", "authenticated",
            "safe_from_quarantine", "sha256"} == set(info)
    assert (info["media_origin"], info["user_id"], info["media_type"]) == (None, alice.user_id, "image/png")

    assert await ok(mod, "POST", f"{ADMIN}/media/unquarantine/{name}/{image}", {}) == {}
    assert await download_status(server, alice, image) == 200
    assert await download_status(server, alice, same_bytes) == 200
    if thumbnails_served:
        assert await thumbnail_status(server, alice, image) == 200
    # Unknown media: Synapse's 404.
    status, data = await mod.request("GET", f"{ADMIN}/media/{name}/nope")
    assert (status, data["errcode"]) == (404, "M_NOT_FOUND")


async def test_quarantine_room_and_user_spare_protected_media(server: TestHomeServer) -> None:
    mod = await admin(server)
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    name = server.config.server_name
    room_id = await alice.create_room()
    picture = await upload(server, alice, b"picture")
    thumb = await upload(server, alice, b"thumb")
    sticker = await upload(server, alice, b"sticker")
    encrypted = await upload(server, alice, b"ciphertext")
    unrelated = await upload(server, alice, b"unrelated")
    bobs = await upload(server, bob, b"bob's")
    await send(alice, room_id, {"msgtype": "m.image", "body": "p", "url": f"mxc://{name}/{picture}",
                                "info": {"thumbnail_url": f"mxc://{name}/{thumb}"}})
    await send(alice, room_id, {"body": "s", "url": f"mxc://{name}/{sticker}"}, "m.sticker")
    await send(alice, room_id, {"msgtype": "m.file", "body": "f", "file": {"url": f"mxc://{name}/{encrypted}"}})
    await send(alice, room_id, {"msgtype": "m.image", "body": "r", "url": "mxc://remote.example/abc"})

    listed = await ok(mod, "GET", f"{ADMIN}/room/{quote(room_id)}/media")
    assert sorted(listed["local"]) == sorted(f"mxc://{name}/{m}" for m in (picture, thumb, sticker, encrypted))
    assert listed["remote"] == ["mxc://remote.example/abc"]

    assert await ok(mod, "POST", f"{ADMIN}/media/protect/{sticker}", {}) == {}
    assert (await ok(mod, "POST", f"{ADMIN}/room/{quote(room_id)}/media/quarantine", {})) == {"num_quarantined": 3}
    for media_id in (picture, thumb, encrypted):
        assert await download_status(server, alice, media_id) == 404
    assert await download_status(server, alice, sticker) == 200
    assert await download_status(server, alice, unrelated) == 200
    # Again: nothing new to quarantine (the legacy path does the same).
    assert (await ok(mod, "POST", f"{ADMIN}/quarantine_media/{quote(room_id)}", {})) == {"num_quarantined": 0}

    # A user's media: the protected one stays, bob's is not touched.
    got = await ok(mod, "POST", f"{ADMIN}/user/{quote(alice.user_id or '')}/media/quarantine", {})
    assert got == {"num_quarantined": 1}
    assert await download_status(server, alice, unrelated) == 404
    assert await download_status(server, alice, sticker) == 200
    assert await download_status(server, bob, bobs) == 200
    # Unprotected, it can be quarantined by ID.
    assert await ok(mod, "POST", f"{ADMIN}/media/unprotect/{sticker}", {}) == {}
    await ok(mod, "POST", f"{ADMIN}/media/quarantine/{name}/{sticker}", {})
    assert await download_status(server, alice, sticker) == 404


async def test_quarantine_cached_remote_media(server: TestHomeServer) -> None:
    mod = await admin(server)
    await add_remote(server, "remote.example", "rem1", b"remote bytes", int(time.time() * 1000))
    await ok(mod, "POST", f"{ADMIN}/media/quarantine/remote.example/rem1", {})
    info = (await ok(mod, "GET", f"{ADMIN}/media/remote.example/rem1"))["media_info"]
    assert info["quarantined_by"] == mod.user_id and info["media_origin"] == "remote.example"
    assert info["safe_from_quarantine"] is None and info["user_id"] is None
    await ok(mod, "POST", f"{ADMIN}/media/unquarantine/remote.example/rem1", {})
    info = (await ok(mod, "GET", f"{ADMIN}/media/remote.example/rem1"))["media_info"]
    assert info["quarantined_by"] is None
    status, _ = await mod.request("GET", f"{ADMIN}/media/remote.example/uncached")
    assert status == 404


# -- listing a user's media ------------------------------------------------------------------------------------
async def test_list_user_media_pages_and_orders(server: TestHomeServer) -> None:
    mod = await admin(server)
    alice = await user(server, "alice")
    ids = []
    for i, size in enumerate((30, 10, 20)):
        ids.append(await upload(server, alice, bytes([65 + i]) * size, "text/plain", f"file{i}.txt"))
        await server.hs.db.execute("UPDATE local_media SET created_ts = $2 WHERE media_id = $1", ids[-1], 1000 + i)
    path = f"{ADMIN}/users/{quote(alice.user_id or '')}/media"

    page = await ok(mod, "GET", path)
    assert page["total"] == 3 and "next_token" not in page
    assert [m["media_id"] for m in page["media"]] == ids[::-1]  # newest first by default
    entry = page["media"][0]
    assert entry["upload_name"] == "file2.txt" and entry["media_length"] == 20 and entry["user_id"] == alice.user_id
    assert entry["safe_from_quarantine"] is False and entry["quarantined_by"] is None

    first = await ok(mod, "GET", path, limit="2", order_by="media_length")
    assert [m["media_length"] for m in first["media"]] == [10, 20] and first["next_token"] == 2
    rest = await ok(mod, "GET", path, limit="2", order_by="media_length", **{"from": "2"})
    assert [m["media_length"] for m in rest["media"]] == [30] and "next_token" not in rest
    assert [m["media_id"] for m in (await ok(mod, "GET", path, dir="f"))["media"]] == ids
    names = [m["upload_name"] for m in (await ok(mod, "GET", path, order_by="upload_name", dir="b"))["media"]]
    assert names == ["file2.txt", "file1.txt", "file0.txt"]

    status, data = await mod.request("GET", path, params={"order_by": "nonsense"})
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM")
    status, data = await mod.request("GET", f"{ADMIN}/users/{quote('@nobody:' + server.config.server_name)}/media")
    assert (status, data["errcode"]) == (404, "M_NOT_FOUND")
    status, data = await mod.request("GET", f"{ADMIN}/users/{quote('@x:elsewhere.example')}/media")
    assert status == 400


# -- deleting --------------------------------------------------------------------------------------------------
async def test_delete_one_keeps_shared_bytes(server: TestHomeServer) -> None:
    mod = await admin(server)
    alice = await user(server, "alice")
    name = server.config.server_name
    first = await upload(server, alice, b"shared bytes")
    second = await upload(server, alice, b"shared bytes")
    sha = await sha_of(server, first)
    # A thumbnail of the bytes (as hs/media/thumbnails.py records them), to see it go with the file.
    thumb_dir = store_root(server) / "thumbnails" / sha[:2] / sha[2:4] / sha
    thumb_dir.mkdir(parents=True)
    (thumb_dir / "32-32-crop.png").write_bytes(b"thumb")
    await server.hs.db.execute("INSERT INTO media_thumbnails (sha256, width, height, method, media_type,"
                               " media_length) VALUES ($1, 32, 32, 'crop', 'image/png', 5)", sha)

    assert await ok(mod, "DELETE", f"{ADMIN}/media/{name}/{first}") == {"deleted_media": [first], "total": 1}
    assert await download_status(server, alice, first) == 404
    assert content_file(server, sha).exists() and thumb_dir.exists()
    assert await download_status(server, alice, second) == 200

    assert await ok(mod, "DELETE", f"{ADMIN}/media/{name}/{second}") == {"deleted_media": [second], "total": 1}
    assert not content_file(server, sha).exists() and not thumb_dir.exists()
    assert await server.hs.db.fetchval("SELECT COUNT(*) FROM media_thumbnails WHERE sha256 = $1", sha) == 0

    status, data = await mod.request("DELETE", f"{ADMIN}/media/{name}/{first}")
    assert (status, data["errcode"]) == (404, "M_NOT_FOUND")
    status, data = await mod.request("DELETE", f"{ADMIN}/media/remote.example/{first}")
    assert status == 400 and data["error"] == "Can only delete local media"


async def test_delete_by_date_size_keeps_avatars(server: TestHomeServer) -> None:
    mod = await admin(server)
    alice = await user(server, "alice")
    name = server.config.server_name
    old_big = await upload(server, alice, b"x" * 100)
    old_small = await upload(server, alice, b"y" * 10)
    avatar = await upload(server, alice, b"z" * 100)
    room_avatar = await upload(server, alice, b"w" * 100)
    recent = await upload(server, alice, b"v" * 100)
    await ok(alice, "PUT", f"/profile/{quote(alice.user_id or '')}/avatar_url", {"avatar_url": f"mxc://{name}/{avatar}"})
    room_id = await alice.create_room()
    await ok(alice, "PUT", f"/rooms/{quote(room_id)}/state/m.room.avatar", {"url": f"mxc://{name}/{room_avatar}"})
    old_ts = 40_000_000_000
    for media_id in (old_big, old_small, avatar, room_avatar):
        await server.hs.db.execute("UPDATE local_media SET last_access_ts = $2 WHERE media_id = $1", media_id,
                                   old_ts - 1000)
    before = str(old_ts)

    status, data = await mod.request("POST", f"{ADMIN}/media/delete", params={"before_ts": "1000"})
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM")
    status, data = await mod.request("POST", f"{ADMIN}/media/delete")
    assert (status, data["errcode"]) == (400, "M_MISSING_PARAM")

    got = await ok(mod, "POST", f"{ADMIN}/media/delete", {}, before_ts=before, size_gt="50")
    assert got == {"deleted_media": [old_big], "total": 1}
    got = await ok(mod, "POST", f"{ADMIN}/media/{name}/delete", {}, before_ts=before)
    assert got == {"deleted_media": [old_small], "total": 1}
    for media_id in (avatar, room_avatar, recent):  # (asked the admin API: a download counts as an access)
        await ok(mod, "GET", f"{ADMIN}/media/{name}/{media_id}")
    got = await ok(mod, "POST", f"{ADMIN}/media/delete", {}, before_ts=before, keep_profiles="false")
    assert sorted(got["deleted_media"]) == sorted([avatar, room_avatar]) and got["total"] == 2
    assert await download_status(server, alice, recent) == 200


async def test_delete_user_media(server: TestHomeServer) -> None:
    mod = await admin(server)
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    mine = [await upload(server, alice, f"alice {i}".encode()) for i in range(3)]
    shared = await upload(server, bob, b"alice 0")
    path = f"{ADMIN}/users/{quote(alice.user_id or '')}/media"
    got = await ok(mod, "DELETE", path)
    assert sorted(got["deleted_media"]) == sorted(mine) and got["total"] == 3
    assert (await ok(mod, "GET", path))["total"] == 0
    assert await download_status(server, bob, shared) == 200
    for media_id in mine:
        assert await download_status(server, alice, media_id) == 404


async def test_purge_media_cache(server: TestHomeServer) -> None:
    mod = await admin(server)
    alice = await user(server, "alice")
    old, new = 40_000_000_000, 50_000_000_000
    stale = await add_remote(server, "remote.example", "stale", b"stale bytes", old)
    fresh = await add_remote(server, "remote.example", "fresh", b"fresh bytes", new)
    await add_remote(server, "remote.example", "blocked", b"blocked bytes", old, quarantined_by=mod.user_id)
    # The same bytes as a local upload: the file stays for it.
    shared_sha = await add_remote(server, "other.example", "shared", b"local too", old)
    local = await upload(server, alice, b"local too")

    status, data = await mod.request("POST", f"{ADMIN}/purge_media_cache", params={"before_ts": "-1"})
    assert status == 400
    got = await ok(mod, "POST", f"{ADMIN}/purge_media_cache", {}, before_ts=str(old + 1))
    assert got == {"deleted": 2}
    assert not content_file(server, stale).exists()
    assert content_file(server, fresh).exists() and content_file(server, shared_sha).exists()
    remaining = await server.hs.db.fetch("SELECT media_id FROM remote_media_cache ORDER BY media_id")
    assert [r["media_id"] for r in remaining] == ["blocked", "fresh"]
    assert await download_status(server, alice, local) == 200
