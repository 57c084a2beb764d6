"""hs/media/multipart.py: the multipart/mixed answers of the federation media endpoints, built and read
back in every chunking (delimiters split across chunks), the redirect part, and malformed or
oversized input refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from hs.media.multipart import (
    MAX_HEADERS_SIZE,
    MultipartError,
    MultipartReader,
    content_type,
    disposition_filename,
    head,
    media_part_headers,
    parse_boundary,
    parse_header,
    read_metadata,
    tail,
)

BOUNDARY = "6067d4698f8d40a0a794ea7d7379d53a"
# Bytes that look like the start of a delimiter, and a delimiter of a longer boundary.
TRICKY = b"a\r\n--6067d4698f8d40a0a794ea7d7379\r\n--\r\n-" + bytes(range(256)) * 40 + b"\r\n"


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def build(body: bytes, *, media_type: str = "image/png", filename: str | None = "cat.png") -> bytes:
    return head(BOUNDARY, media_part_headers(media_type, filename)) + body + tail(BOUNDARY)


async def read_all(data: bytes, size: int) -> tuple[dict[str, object], dict[str, str], bytes, MultipartReader]:
    reader = MultipartReader(chunked(data, size), BOUNDARY)
    metadata, headers = await read_metadata(reader)
    body = b"".join([c async for c in reader.body()])
    return metadata, headers, body, reader


@pytest.mark.parametrize("size", [1, 2, 3, 7, 37, 38, 39, 1000, 1 << 20])
async def test_round_trip_in_any_chunking(size: int) -> None:
    data = build(TRICKY)
    metadata, headers, body, reader = await read_all(data, size)
    assert metadata == {}
    assert headers["content-type"] == "image/png"
    assert headers["content-disposition"] == 'inline; filename="cat.png"'
    assert body == TRICKY
    assert await reader.next_part() is None
    assert await reader.next_part() is None


async def test_empty_media_and_padding_preamble_epilogue() -> None:
    data = (b"a preamble\r\n--" + BOUNDARY.encode() + b"  \t\r\nContent-Type: application/json\r\n\r\n{\"x\": 1}"
            b"\r\n--" + BOUNDARY.encode() + b"\r\ncontent-type: text/plain\r\n\r\n"
            b"\r\n--" + BOUNDARY.encode() + b"--\r\nan epilogue")
    metadata, headers, body, reader = await read_all(data, 5)
    assert metadata == {"x": 1} and headers == {"content-type": "text/plain"} and body == b""
    assert await reader.next_part() is None


async def test_redirect_part() -> None:
    data = (head(BOUNDARY, {"Location": "https://cdn.example/media/abc?sig=1"}) + tail(BOUNDARY))
    metadata, headers, body, reader = await read_all(data, 3)
    assert headers == {"location": "https://cdn.example/media/abc?sig=1"} and body == b""
    assert await reader.next_part() is None


async def test_folded_header_and_no_headers() -> None:
    data = (f"--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{BOUNDARY}\r\n"
            f"Content-Disposition: attachment;\r\n filename=\"a b.txt\"\r\n\r\nxyz\r\n--{BOUNDARY}--").encode()
    _, headers, body, _ = await read_all(data, 4)
    assert headers == {"content-disposition": 'attachment; filename="a b.txt"'} and body == b"xyz"
    bare = f"--{BOUNDARY}\r\n\r\n{{}}\r\n--{BOUNDARY}--".encode()
    reader = MultipartReader(chunked(bare, 2), BOUNDARY)
    assert await reader.next_part() == {}
    assert await reader.read(10) == b"{}"


async def test_truncated_body_is_an_error() -> None:
    data = build(TRICKY)
    for cut in (len(data) - 3, len(data) - len(tail(BOUNDARY)), len(data) - len(tail(BOUNDARY)) - 100):
        reader = MultipartReader(chunked(data[:cut], 1000), BOUNDARY)
        await read_metadata(reader)
        with pytest.raises(MultipartError):
            async for _ in reader.body():
                pass
            await reader.next_part()


@pytest.mark.parametrize("data", [
    b"",  # nothing at all
    b"--other\r\n\r\n{}\r\n--other--",  # another boundary
    f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\n{{}}\r\n--{BOUNDARY}--".encode(),  # first part not JSON
    f"--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n[1]\r\n--{BOUNDARY}--".encode(),  # not an object
    f"--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n{{nope\r\n--{BOUNDARY}--".encode(),  # not JSON
    f"--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{BOUNDARY}--".encode(),  # one part only
    f"--{BOUNDARY}junk\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{BOUNDARY}--".encode(),  # bad line
    f"--{BOUNDARY}\r\nNo colon here\r\n\r\n{{}}\r\n--{BOUNDARY}--".encode(),  # bad header
    b"x" * 20_000 + f"\r\n--{BOUNDARY}\r\n".encode(),  # endless preamble
])
async def test_malformed_input_refused(data: bytes) -> None:
    reader = MultipartReader(chunked(data, 7), BOUNDARY)
    with pytest.raises(MultipartError):
        await read_metadata(reader)


async def test_oversized_headers_and_metadata_refused() -> None:
    big = f"--{BOUNDARY}\r\nX-Big: {'a' * (MAX_HEADERS_SIZE + 10)}\r\n\r\n{{}}\r\n--{BOUNDARY}--".encode()
    with pytest.raises(MultipartError):
        await read_metadata(MultipartReader(chunked(big, 4096), BOUNDARY))
    endless = f"--{BOUNDARY}\r\nX-Endless: ".encode() + b"a" * (MAX_HEADERS_SIZE * 4)
    with pytest.raises(MultipartError):
        await read_metadata(MultipartReader(chunked(endless, 4096), BOUNDARY))
    metadata = f"--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n".encode() + b" " * 70_000 + b"{}"
    with pytest.raises(MultipartError):
        await read_metadata(MultipartReader(chunked(metadata + tail(BOUNDARY), 4096), BOUNDARY))


async def test_read_is_capped() -> None:
    reader = MultipartReader(chunked(build(b"x" * 5000), 100), BOUNDARY)
    await read_metadata(reader)
    with pytest.raises(MultipartError):
        await reader.read(4999)
    reader = MultipartReader(chunked(build(b"x" * 5000), 100), BOUNDARY)
    await read_metadata(reader)
    assert await reader.read(5000) == b"x" * 5000


async def test_third_part_is_seen() -> None:
    data = head(BOUNDARY, {"Content-Type": "text/plain"}) + b"one" + f"\r\n--{BOUNDARY}\r\n\r\ntwo".encode() + tail(
        BOUNDARY)
    _, _, body, reader = await read_all(data, 3)
    assert body == b"one"
    assert await reader.next_part() == {}


def test_boundary_from_content_type() -> None:
    assert parse_boundary(content_type(BOUNDARY)) == BOUNDARY
    assert parse_boundary('Multipart/Mixed; charset=x; boundary="a b:c"') == "a b:c"
    for bad in (None, "", "application/json", "multipart/mixed", "multipart/mixed; boundary=",
                "multipart/mixed; boundary=" + "a" * 71, 'multipart/mixed; boundary="a\x01b"',
                "multipart/form-data; boundary=abc"):
        with pytest.raises(MultipartError):
            parse_boundary(bad)


def test_header_parameters_and_filenames() -> None:
    assert parse_header('Attachment; filename="a;b \\"c\\".txt"; size=3') == (
        "attachment", {"filename": 'a;b "c".txt', "size": "3"})
    assert disposition_filename('inline; filename="cat.png"') == "cat.png"
    assert disposition_filename("attachment; filename=plain.txt") == "plain.txt"
    assert disposition_filename("inline; filename*=utf-8''%E2%98%83%20snow.png; filename=\"x.png\"") == "☃ snow.png"
    assert disposition_filename("inline; filename*=nonsense''%E2") is None
    assert disposition_filename("inline") is None
    assert disposition_filename(None) is None
    # What the server sends for each kind of name reads back as the name.
    for name in ("plain.txt", "☃.png", 'quote".txt', "semi;colon.txt"):
        assert disposition_filename(media_part_headers("image/png", name)["Content-Disposition"]) == name
    assert media_part_headers("text/html", None) == {"Content-Type": "text/html; charset=UTF-8",
                                                     "Content-Disposition": "attachment"}
