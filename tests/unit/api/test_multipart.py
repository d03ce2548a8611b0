"""The streaming multipart reader, fed in every possible chunking."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from dicomweb_server.api.multipart import PartData, PartEnd, PartStart, read_multipart
from dicomweb_server.errors import BadRequest, PayloadTooLarge


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def parse(
    body: bytes, boundary: str = "b0", size: int = 1 << 16, **kwargs: int
) -> list[tuple[dict[str, str], bytes]]:
    async def run() -> list[tuple[dict[str, str], bytes]]:
        parts: list[tuple[dict[str, str], bytes]] = []
        headers: dict[str, str] = {}
        content = bytearray()
        async for event in read_multipart(_chunks(body, size), boundary, **kwargs):
            if isinstance(event, PartStart):
                headers, content = event.headers, bytearray()
            elif isinstance(event, PartData):
                content += event.data
            elif isinstance(event, PartEnd):
                parts.append((headers, bytes(content)))
        return parts

    return anyio.run(run)


PAYLOADS = [b"first\r\n--b not a delimiter\r\n--b\r\n", b"", b"\r\n--b", b"x" * 70000]


def body(payloads: list[bytes], boundary: str = "b0") -> bytes:
    out = b""
    for payload in payloads:
        out += (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + payload + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 1000, 1 << 20])
def test_any_chunking_gives_the_same_parts(size: int) -> None:
    parts = parse(body(PAYLOADS), size=size)
    assert [content for _, content in parts] == PAYLOADS
    assert all(headers == {"content-type": "application/dicom"} for headers, _ in parts)


def test_preamble_leading_crlf_padding_and_no_final_crlf() -> None:
    raw = b"\r\npreamble text\r\n--b0  \r\nContent-Type: a/b\r\n\r\nDATA\r\n--b0--"
    assert parse(raw) == [({"content-type": "a/b"}, b"DATA")]
    assert parse(b"\r\n" + body([b"X"]).rstrip(b"\r\n")) == [
        ({"content-type": "application/dicom"}, b"X")
    ]


def test_part_without_headers() -> None:
    assert parse(b"--b0\r\n\r\nabc\r\n--b0--\r\n") == [({}, b"abc")]


@pytest.mark.parametrize(
    "raw",
    [
        b"no delimiter at all",
        b"--b0\r\nContent-Type: a/b\r\n\r\ntruncated content",
        b"--b0\r\nContent-Type: a/b",
        b"--b0\r\nbroken header line\r\n\r\nx\r\n--b0--",
    ],
)
def test_malformed_bodies(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse(raw)


def test_limits() -> None:
    with pytest.raises(PayloadTooLarge):
        parse(b"--b0\r\nX-Long: " + b"a" * 5000 + b"\r\n\r\nx\r\n--b0--", max_header_bytes=1024)
    with pytest.raises(PayloadTooLarge):
        parse(body([b"1", b"2", b"3"]), max_parts=2)


def test_long_preamble_is_refused_without_reading_everything() -> None:
    consumed = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal consumed
        while consumed < 50 * 1024 * 1024:
            consumed += 65536
            yield b"x" * 65536

    async def run() -> None:
        async for _ in read_multipart(endless(), "b0"):
            pass

    with pytest.raises(BadRequest):
        anyio.run(run)
    assert consumed < 1024 * 1024
