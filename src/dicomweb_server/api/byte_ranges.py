"""RFC 9110 byte-range requests (13.1.5, 14, 15.3.7, 15.5.17) over one stored representation."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from starlette.concurrency import iterate_in_threadpool
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from dicomweb_server.api.encoding import new_boundary
from dicomweb_server.errors import StorageError

#: ``read(offset, size)`` yields the bytes of [offset, offset + size) in chunks; it may block.
Reader = Callable[[int, int], Iterator[bytes]]

#: More ranges than this, left after coalescing, get the whole representation (a 200): the
#: client still receives correct bytes, and a response never costs more than a plain GET.
MAX_RANGES = 16

#: A longer Range header is ignored unparsed (a 200). 16 ranges of 12-digit positions fit in
#: ~420 characters; this also keeps every int() below far from Python's digit-count limit.
MAX_RANGE_HEADER_LENGTH = 4096

# ASCII digits only: \d and int() would also accept other scripts' digits, "+", "_" and spaces.
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")

# Framing is this module's business; a caller's copy of these would contradict the body sent.
_FRAMING_HEADERS = frozenset({"content-type", "content-length", "content-range"})

# A 416 depends on the Range header, which is not part of a cache key: never let it be stored.
_FRESHNESS_HEADERS = frozenset({"cache-control", "expires"})


class PartsResponse(Response):
    """A response whose body is already in memory as a few pieces (multipart framing around
    a stored frame or instance), sent as consecutive body messages under one Content-Length.

    Joining the framing to a half-megabyte payload copied the payload once per join and
    cost more CPU than reading it; sending the pieces as they are copies nothing.
    """

    def __init__(
        self,
        parts: Sequence[bytes],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        self.parts = [part for part in parts if part]
        self.status_code = status_code
        if media_type is not None:
            self.media_type = media_type
        self.background = None
        self.body = b""
        length = str(sum(len(part) for part in self.parts))
        kept = {k: v for k, v in (headers or {}).items() if k.lower() != "content-length"}
        self.init_headers({**kept, "content-length": length})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        parts = self.parts
        if not parts:
            await send({"type": "http.response.body", "body": b""})
            return
        last = len(parts) - 1
        for index, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": index < last})


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive span of byte positions, as written in Content-Range."""

    start: int
    end: int

    @property
    def size(self) -> int:
        """The number of bytes in the span."""
        return self.end - self.start + 1

    def content_range(self, length: int) -> str:
        """The Content-Range value of this span of a representation of ``length`` bytes."""
        return f"bytes {self.start}-{self.end}/{length}"


def _coalesce(spans: list[ByteRange]) -> list[ByteRange]:
    """Overlapping and adjacent spans merged, in the order their first range-spec came."""
    # RFC 9110 14.2 lets a server coalesce (which also defeats "0-,0-,0-..." amplification);
    # 15.3.7.2 asks for the request's order otherwise, so a merged span takes the place of
    # its earliest member. An ascending request (what 14.2 asks of clients) stays ascending.
    groups: list[tuple[int, int, int]] = []  # (start, end, index of the earliest member)
    for index in sorted(range(len(spans)), key=lambda i: (spans[i].start, spans[i].end)):
        span = spans[index]
        if groups and span.start <= groups[-1][1] + 1:
            start, end, first = groups[-1]
            groups[-1] = (start, max(end, span.end), min(first, index))
        else:
            groups.append((span.start, span.end, index))
    groups.sort(key=lambda group: group[2])
    return [ByteRange(start, end) for start, end, _ in groups]


def parse_range(header: str, length: int) -> list[ByteRange] | None:
    """The spans a Range header asks of ``length`` bytes: None to ignore it, [] if unsatisfiable."""
    if len(header) > MAX_RANGE_HEADER_LENGTH:
        return None
    unit, equals, range_set = header.partition("=")
    # Range units are case-insensitive (14.1); an origin server ignores units it lacks (14.2).
    if not equals or unit.strip(" \t").lower() != "bytes":
        return None
    # The list syntax tolerates OWS and empty elements (5.6.1) but needs one range-spec.
    specs = [spec for spec in (item.strip(" \t") for item in range_set.split(",")) if spec]
    if not specs:
        return None
    spans: list[ByteRange] = []
    wants_suffix = False
    for spec in specs:
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None:
            return None
        first, last = match.groups()
        if first:
            start = int(first)
            if last and int(last) < start:
                # An invalid range-spec (14.1.1). RFC 7233 2.1 made the recipient ignore the
                # whole header and RFC 9110 14.2 still allows it: a 200 is never wrong bytes.
                return None
            if start < length:
                spans.append(ByteRange(start, min(int(last), length - 1) if last else length - 1))
        elif last:
            suffix = int(last)
            if suffix > 0:
                # A suffix longer than the representation means all of it (14.1.2).
                wants_suffix = True
                if length > 0:
                    spans.append(ByteRange(max(0, length - suffix), length - 1))
        else:
            return None  # a bare "-"
    if length == 0 and wants_suffix:
        # 14.1.1 calls a non-zero suffix of an empty representation satisfiable, yet no
        # Content-Range can describe it: the whole, empty 200 is the only truthful answer.
        return None
    merged = _coalesce(spans)
    return None if len(merged) > MAX_RANGES else merged


def if_range_allows(if_range: str | None, etag: str, last_modified: str | None) -> bool:
    """Whether an If-Range precondition (RFC 9110 13.1.5) lets the Range header apply."""
    if if_range is None:
        return True
    value = if_range.strip(" \t")
    if value.startswith(('"', "W/")):
        # Strong comparison (8.8.3.2): a weak tag on either side never matches.
        return not value.startswith("W/") and not etag.startswith("W/") and value == etag
    # An HTTP-date must equal Last-Modified character for character; an unparsable or
    # differently formatted value fails, which only costs a whole 200.
    return bool(value) and last_modified is not None and value == last_modified


def _exact(read: Reader, start: int, size: int) -> Iterator[bytes]:
    """The reader's chunks for [start, start + size), held to exactly ``size`` bytes."""
    # Content-Length (and each part's framing) is sent before the bytes are read, so a blob
    # that changed length must neither spill into the next part nor end the body early.
    if size == 0:
        return
    remaining = size
    for chunk in read(start, size):
        if len(chunk) >= remaining:
            yield chunk[:remaining]
            return
        if chunk:
            yield chunk
            remaining -= len(chunk)
    raise StorageError(
        f"the stored representation ended {remaining} bytes short of "
        f"bytes {start}-{start + size - 1}"
    )


def _stream(read: Reader, start: int, size: int) -> AsyncIterator[bytes]:
    """The span's bytes, each blocking read done in a worker thread."""
    return iterate_in_threadpool(_exact(read, start, size))


def _warning(request_headers: Mapping[str, str], text: str) -> str:
    """A ``Warning: 299`` value in the form ``api.errors.warning_value`` gives (PS3.18 8.3.5)."""
    # warning_value wants a Request; this module only sees the headers.
    return f'299 {request_headers.get("host", "dicomweb-server")}: "{text}"'


def range_response(
    request_headers: Mapping[str, str],
    *,
    length: int,
    etag: str,
    media_type: str,
    read: Reader,
    headers: Mapping[str, str] | None = None,
    last_modified: str | None = None,
    method_head: bool = False,
) -> Response:
    """The 200, 206 or 416 answer to a GET or HEAD of one representation of ``length`` bytes."""
    # request_headers must look names up case-insensitively (starlette's Headers does).
    # last_modified must be a strong validator (8.8.2.2) for an If-Range date to use it.
    if length < 0:
        raise ValueError(f"negative representation length {length}")
    common = {
        name.lower(): value
        for name, value in (headers or {}).items()
        if name.lower() not in _FRAMING_HEADERS
    }
    common["accept-ranges"] = "bytes"
    common["etag"] = etag
    if last_modified is not None:
        common["last-modified"] = last_modified
    whole = {**common, "content-type": media_type, "content-length": str(length)}
    if method_head:
        # GET is the only method range handling is defined for (14.2): a HEAD describes the
        # 200, and Content-Length is the GET's, not that of the empty body sent here.
        return Response(status_code=200, headers=whole)
    range_header = request_headers.get("range")
    ranges = None
    if range_header is not None and if_range_allows(
        request_headers.get("if-range"), etag, last_modified
    ):
        ranges = parse_range(range_header, length)
    if ranges is None:
        return StreamingResponse(_stream(read, 0, length), headers=whole)
    if not ranges:
        message = f"no requested byte range is satisfiable; the representation is {length} bytes"
        unsatisfiable = {
            name: value for name, value in common.items() if name not in _FRESHNESS_HEADERS
        }
        unsatisfiable["content-range"] = f"bytes */{length}"
        unsatisfiable["warning"] = _warning(request_headers, message)
        return PlainTextResponse(message + "\n", status_code=416, headers=unsatisfiable)
    if len(ranges) == 1:
        (span,) = ranges
        single = {
            **common,
            "content-type": media_type,
            "content-length": str(span.size),
            "content-range": span.content_range(length),
        }
        return StreamingResponse(_stream(read, span.start, span.size), 206, headers=single)
    return _multipart(common, ranges, length=length, media_type=media_type, read=read)


def _multipart(
    common: dict[str, str],
    ranges: list[ByteRange],
    *,
    length: int,
    media_type: str,
    read: Reader,
) -> Response:
    """A 206 multipart/byteranges body (RFC 9110 14.6) with its exact Content-Length."""
    boundary = new_boundary()
    heads = [
        (
            f"--{boundary}\r\nContent-Type: {media_type}\r\n"
            f"Content-Range: {span.content_range(length)}\r\n\r\n"
        ).encode("latin-1")
        for span in ranges
    ]
    close = f"--{boundary}--\r\n".encode("latin-1")
    # The framing is fixed before any byte is read, so the size is known up front and the
    # client can tell a complete body from a cut one; each part ends with its CRLF.
    total = sum(len(head) + span.size + 2 for head, span in zip(heads, ranges, strict=True))
    total += len(close)

    async def body() -> AsyncIterator[bytes]:
        for head, span in zip(heads, ranges, strict=True):
            yield head
            async for chunk in _stream(read, span.start, span.size):
                yield chunk
            yield b"\r\n"
        yield close

    multipart = {
        **common,
        "content-type": f"multipart/byteranges; boundary={boundary}",
        "content-length": str(total),
    }
    return StreamingResponse(body(), 206, headers=multipart)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match uses weak comparison over a list of entity tags (RFC 9110 13.1.2)."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False
