"""Streaming reader for ``multipart/related`` bodies (RFC 2387, RFC 2046 5.1).

STOW-RS bodies can be gigabytes, so the body is never held in memory: the reader yields
each part's headers and then its content in chunks as they arrive. It is tolerant of what
real clients send: a leading CRLF before the first delimiter, transport padding after a
delimiter, and a missing CRLF after the close delimiter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from dicomweb_server.errors import BadRequest, PayloadTooLarge


@dataclass(frozen=True, slots=True)
class PartStart:
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class PartData:
    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd

#: A preamble longer than this is not a STOW-RS body; refuse it instead of reading it all.
MAX_PREAMBLE_BYTES = 64 * 1024


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw in block.split(b"\r\n"):
        if not raw.strip():
            continue
        name, colon, value = raw.partition(b":")
        if not colon:
            raise BadRequest("malformed multipart part header line")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return headers


async def read_multipart(
    chunks: AsyncIterator[bytes],
    boundary: str,
    *,
    max_header_bytes: int = 16384,
    max_parts: int | None = None,
) -> AsyncIterator[Event]:
    """Yield PartStart, PartData..., PartEnd for each part of the body.

    Raises :class:`BadRequest` when the body is not a parsable multipart body (no opening
    delimiter, or the body ends inside a part) and :class:`PayloadTooLarge` when a part
    header block or the part count exceeds its limit.
    """
    delimiter = b"--" + boundary.encode("latin-1")
    inner = b"\r\n" + delimiter
    buffer = bytearray()
    stream = chunks.__aiter__()
    exhausted = False

    async def fill() -> bool:
        nonlocal exhausted
        if exhausted:
            return False
        try:
            chunk = await stream.__anext__()
        except StopAsyncIteration:
            exhausted = True
            return False
        buffer.extend(chunk)
        return True

    # Preamble: find the first delimiter, at the very start or after a CRLF.
    skipped = 0
    while True:
        if buffer.startswith(delimiter):
            del buffer[: len(delimiter)]
            break
        position = buffer.find(inner)
        if position >= 0:
            del buffer[: position + len(inner)]
            break
        if len(buffer) > max_header_bytes and not exhausted:
            skipped += len(buffer) - len(inner)
            if skipped > MAX_PREAMBLE_BYTES:
                raise BadRequest("the body is not multipart: no boundary delimiter found")
            del buffer[: len(buffer) - len(inner)]
        if not await fill():
            raise BadRequest("the body is not multipart: no boundary delimiter found")

    parts = 0
    while True:
        # After a delimiter: "--" closes the body, otherwise padding and CRLF start a part.
        while len(buffer) < 2 and await fill():
            pass
        if buffer.startswith(b"--"):
            # Read the epilogue (ignored, RFC 2046 5.1.1) to the end of the body before the
            # response goes out. A response sent while request data is still arriving makes
            # some HTTP/2 servers (Hypercorn) drop the whole connection, in-flight requests
            # of other streams included. Bounded: a body that goes on after the close
            # delimiter for longer than a preamble may is left unread.
            epilogue = len(buffer)
            buffer.clear()
            while epilogue <= MAX_PREAMBLE_BYTES and await fill():
                epilogue += len(buffer)
                buffer.clear()
            return
        while True:
            end_of_line = buffer.find(b"\r\n")
            if end_of_line >= 0:
                if buffer[:end_of_line].strip(b" \t"):
                    raise BadRequest("malformed multipart delimiter line")
                del buffer[: end_of_line + 2]
                break
            if len(buffer) > 1024 or not await fill():
                raise BadRequest("malformed or truncated multipart delimiter line")

        # Part headers end at an empty line (immediately, when the part has none).
        while True:
            if buffer.startswith(b"\r\n"):
                headers: dict[str, str] = {}
                del buffer[:2]
                break
            end = buffer.find(b"\r\n\r\n")
            if end > max_header_bytes:
                raise PayloadTooLarge("a multipart part header block exceeds the limit")
            if end >= 0:
                headers = _parse_headers(bytes(buffer[:end]))
                del buffer[: end + 4]
                break
            if len(buffer) > max_header_bytes:
                raise PayloadTooLarge("a multipart part header block exceeds the limit")
            if not await fill():
                raise BadRequest("the body ends inside a part's headers")
        parts += 1
        if max_parts is not None and parts > max_parts:
            raise PayloadTooLarge(
                f"the request has more than {max_parts} parts (DICOMWEB_MAX_PARTS_PER_REQUEST); "
                "instances of the parts before may already be stored: send the rest in "
                "another request"
            )
        yield PartStart(headers)

        # Content runs until CRLF + delimiter; keep a tail that could hold a split delimiter.
        while True:
            position = buffer.find(inner)
            if position >= 0:
                if position:
                    with memoryview(buffer) as view:
                        content = bytes(view[:position])
                    yield PartData(content)
                del buffer[: position + len(inner)]
                yield PartEnd()
                break
            keep = len(inner) - 1
            if len(buffer) > keep:
                with memoryview(buffer) as view:
                    content = bytes(view[: len(buffer) - keep])
                yield PartData(content)
                del buffer[: len(buffer) - keep]
            if not await fill():
                raise BadRequest("the body ends inside a part: no closing boundary delimiter")
