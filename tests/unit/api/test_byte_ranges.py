"""Byte-range requests: Range parsing, If-Range, and the 200/206/416 responses they lead to."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomweb_server.api.byte_ranges import (
    MAX_RANGE_HEADER_LENGTH,
    MAX_RANGES,
    ByteRange,
    PartsResponse,
    if_range_allows,
    parse_range,
    range_response,
)
from dicomweb_server.errors import StorageError

# --- parse_range ----------------------------------------------------------------------------

Spans = list[tuple[int, int]]

# RFC 9110 14.1.2 uses a 10000-byte representation.
SATISFIABLE: list[tuple[str, int, Spans]] = [
    # The examples of 14.1.2.
    ("bytes=0-499", 10000, [(0, 499)]),
    ("bytes=500-999", 10000, [(500, 999)]),
    ("bytes=-500", 10000, [(9500, 9999)]),
    ("bytes=9500-", 10000, [(9500, 9999)]),
    ("bytes=0-0,-1", 10000, [(0, 0), (9999, 9999)]),
    ("bytes=0-999,4500-5499,-1000", 10000, [(0, 999), (4500, 5499), (9000, 9999)]),
    # Coalescing: adjacent, overlapping, contained, repeated.
    ("bytes=500-600,601-999", 10000, [(500, 999)]),
    ("bytes=500-700,601-999", 10000, [(500, 999)]),
    ("bytes=0-999,100-200", 10000, [(0, 999)]),
    ("bytes=0-,0-,0-,0-", 10000, [(0, 9999)]),
    ("bytes=-1,9999-", 10000, [(9999, 9999)]),
    ("bytes=500-600,602-999", 10000, [(500, 600), (602, 999)]),
    # Parts keep the request's order (15.3.7.2); a merged span takes its first member's place.
    ("bytes=10-20,0-5", 10000, [(10, 20), (0, 5)]),
    ("bytes=10-20,0-5,15-30", 10000, [(10, 30), (0, 5)]),
    ("bytes=-1,0-0", 10000, [(9999, 9999), (0, 0)]),
    # Clamping to the representation.
    ("bytes=0-99999999999999999999999999", 10000, [(0, 9999)]),
    ("bytes=9000-10000", 10000, [(9000, 9999)]),
    ("bytes=-99999999999999999999999999", 10000, [(0, 9999)]),
    ("bytes=-10000", 10000, [(0, 9999)]),
    ("bytes=9999-9999", 10000, [(9999, 9999)]),
    ("bytes=-5", 1, [(0, 0)]),
    ("bytes=0-0", 1, [(0, 0)]),
    # Unsatisfiable specs are dropped when others remain.
    ("bytes=10000-,0-1", 10000, [(0, 1)]),
    ("bytes=-0,5-", 10000, [(5, 9999)]),
    # Syntax tolerance: unit case, OWS, empty list elements, leading zeros.
    ("Bytes=0-1", 10000, [(0, 1)]),
    ("BYTES=0-1", 10000, [(0, 1)]),
    ("bytes= 0-1 , 3-4", 10000, [(0, 1), (3, 4)]),
    ("bytes=\t0-1,\t3-4\t", 10000, [(0, 1), (3, 4)]),
    ("bytes=0-1,,3-4,", 10000, [(0, 1), (3, 4)]),
    ("bytes=,0-1", 10000, [(0, 1)]),
    ("bytes=0000-0001", 10000, [(0, 1)]),
]

UNSATISFIABLE: list[tuple[str, int]] = [
    ("bytes=10000-", 10000),
    ("bytes=10000-20000", 10000),
    ("bytes=99999999999999999999999999-", 10000),
    ("bytes=-0", 10000),
    ("bytes=10000-,20000-30000,-0", 10000),
    # An empty representation satisfies only a non-zero suffix.
    ("bytes=0-", 0),
    ("bytes=0-0", 0),
    ("bytes=-0", 0),
]

IGNORED: list[tuple[str, int]] = [
    # Invalid range-specs (14.1.1): the whole header is ignored.
    ("bytes=5-2", 10000),
    ("bytes=0-1,5-2", 10000),
    ("bytes=20000-10000", 10000),
    # Other units, or no unit.
    ("items=0-1", 10000),
    ("bytes", 10000),
    ("=0-1", 10000),
    ("", 10000),
    ("bytes 0-1", 10000),
    # An empty range-set.
    ("bytes=", 10000),
    ("bytes=,", 10000),
    ("bytes= , ", 10000),
    # Malformed range-specs.
    ("bytes=a-b", 10000),
    ("bytes=-", 10000),
    ("bytes=1", 10000),
    ("bytes=0-1-2", 10000),
    ("bytes=--1", 10000),
    ("bytes=+1-2", 10000),
    ("bytes=0x10-20", 10000),
    ("bytes=1_0-20", 10000),
    ("bytes=0 - 1", 10000),
    ("bytes=0-1;", 10000),
    ("bytes=\u0661-\u0662", 10000),  # Arabic-Indic digits, which int() would take
    ("bytes=0-1\n,2-3", 10000),
    # A non-zero suffix of an empty representation: the whole (empty) 200.
    ("bytes=-5", 0),
    ("bytes=0-,-1", 0),
]


@pytest.mark.parametrize(("header", "length", "expected"), SATISFIABLE)
def test_parse_satisfiable(header: str, length: int, expected: Spans) -> None:
    assert parse_range(header, length) == [ByteRange(start, end) for start, end in expected]


@pytest.mark.parametrize(("header", "length"), UNSATISFIABLE)
def test_parse_unsatisfiable(header: str, length: int) -> None:
    assert parse_range(header, length) == []


@pytest.mark.parametrize(("header", "length"), IGNORED)
def test_parse_ignored(header: str, length: int) -> None:
    assert parse_range(header, length) is None


def test_parse_bounds_the_number_of_ranges() -> None:
    disjoint = [f"{2 * i}-{2 * i}" for i in range(MAX_RANGES + 1)]
    at_limit = parse_range("bytes=" + ",".join(disjoint[:MAX_RANGES]), 10000)
    assert at_limit == [ByteRange(2 * i, 2 * i) for i in range(MAX_RANGES)]
    assert parse_range("bytes=" + ",".join(disjoint), 10000) is None
    # The limit counts what is left after coalescing.
    assert parse_range("bytes=" + ",".join(["0-1"] * 200), 10000) == [ByteRange(0, 1)]
    assert parse_range("bytes=" + ",".join(f"{i}-{i}" for i in range(300)), 10000) == [
        ByteRange(0, 299)
    ]


def test_parse_bounds_the_header_length() -> None:
    padded = "bytes=0-1" + "," * (MAX_RANGE_HEADER_LENGTH - len("bytes=0-1"))
    assert len(padded) == MAX_RANGE_HEADER_LENGTH
    assert parse_range(padded, 10000) == [ByteRange(0, 1)]
    assert parse_range(padded + ",", 10000) is None
    assert parse_range("bytes=0-" + "9" * 10000, 10000) is None


def test_byte_range_helpers() -> None:
    span = ByteRange(500, 999)
    assert span.size == 500
    assert span.content_range(8000) == "bytes 500-999/8000"


# --- if_range_allows ------------------------------------------------------------------------

ETAG = '"5d41402abc4b2a76b9719d911017c592"'
LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"

IF_RANGE: list[tuple[str | None, str, str | None, bool]] = [
    (None, ETAG, None, True),
    (None, ETAG, LAST_MODIFIED, True),
    (ETAG, ETAG, None, True),
    (f" {ETAG}\t", ETAG, LAST_MODIFIED, True),
    (f"W/{ETAG}", ETAG, None, False),
    (ETAG, f"W/{ETAG}", None, False),
    (f"W/{ETAG}", f"W/{ETAG}", None, False),
    ('"other"', ETAG, None, False),
    (ETAG.strip('"'), ETAG, None, False),
    (f"{ETAG}, {ETAG}", ETAG, None, False),
    ("*", ETAG, None, False),
    ("", ETAG, None, False),
    ("", ETAG, "", False),
    (LAST_MODIFIED, ETAG, LAST_MODIFIED, True),
    (f" {LAST_MODIFIED} ", ETAG, LAST_MODIFIED, True),
    (LAST_MODIFIED, ETAG, None, False),
    ("Wed, 21 Oct 2015 07:28:01 GMT", ETAG, LAST_MODIFIED, False),
    # The same instant in an obsolete format is not an exact match.
    ("Wednesday, 21-Oct-15 07:28:00 GMT", ETAG, LAST_MODIFIED, False),
    ("Wed Oct 21 07:28:00 2015", ETAG, LAST_MODIFIED, False),
    (ETAG, ETAG, LAST_MODIFIED, True),
]


@pytest.mark.parametrize(("if_range", "etag", "last_modified", "expected"), IF_RANGE)
def test_if_range_allows(
    if_range: str | None, etag: str, last_modified: str | None, expected: bool
) -> None:
    assert if_range_allows(if_range, etag, last_modified) is expected


# --- range_response -------------------------------------------------------------------------

DATA = bytes(range(256)) * 40 + b"tail"  # 10244 bytes with no boundary-like run
LENGTH = len(DATA)
MEDIA_TYPE = 'multipart/related; type="application/dicom"; boundary=dicomweb-0123'
CHUNK = 1000


class Blob:
    """An in-memory reader that records its calls and whether each ran on an event loop."""

    def __init__(self, data: bytes, *, shortfall: int = 0, excess: bytes = b"") -> None:
        self.data = data
        self.shortfall = shortfall
        self.excess = excess
        self.calls: list[tuple[int, int]] = []
        self.on_event_loop: list[bool] = []

    def read(self, offset: int, size: int) -> Iterator[bytes]:
        self.calls.append((offset, size))
        try:
            asyncio.get_running_loop()
            self.on_event_loop.append(True)
        except RuntimeError:
            self.on_event_loop.append(False)
        end = offset + size - self.shortfall
        for start in range(offset, end, CHUNK):
            yield self.data[start : min(start + CHUNK, end)]
        if self.excess:
            yield self.excess


class Harness:
    """A one-route Starlette app answering /blob with range_response over a Blob."""

    def __init__(self, blob: Blob, extra: dict[str, str] | None = None) -> None:
        self.blob = blob
        self.extra = (
            extra if extra is not None else {"Vary": "Accept", "Cache-Control": "max-age=60"}
        )
        self.app = Starlette(routes=[Route("/blob", self.endpoint, methods=["GET", "HEAD"])])

    async def endpoint(self, request: Request) -> Response:
        return range_response(
            request.headers,
            length=len(self.blob.data),
            etag=ETAG,
            media_type=MEDIA_TYPE,
            read=self.blob.read,
            headers=self.extra,
            last_modified=LAST_MODIFIED,
            method_head=request.method == "HEAD",
        )

    def request(self, method: str, headers: dict[str, str] | None = None) -> httpx.Response:
        async def run() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://archive.test") as c:
                return await c.request(method, "/blob", headers=headers)

        return anyio.run(run)

    def get(self, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.request("GET", headers)


@pytest.fixture
def blob() -> Blob:
    return Blob(DATA)


@pytest.fixture
def harness(blob: Blob) -> Harness:
    return Harness(blob)


def _common_headers(response: httpx.Response, *, cached: bool = True) -> None:
    headers = response.headers
    assert headers["accept-ranges"] == "bytes"
    assert headers["etag"] == ETAG
    assert headers["last-modified"] == LAST_MODIFIED
    assert headers["vary"] == "Accept"
    assert ("cache-control" in headers) is cached


def _parse_byteranges(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/byteranges body, checking its framing strictly."""
    kind, _, params = content_type.partition(";")
    assert kind == "multipart/byteranges"
    name, _, boundary = params.strip().partition("=")
    assert name == "boundary"
    assert boundary
    opening, close = f"--{boundary}\r\n".encode(), f"\r\n--{boundary}--\r\n".encode()
    assert body.startswith(opening)
    assert body.endswith(close)
    parts = []
    for raw in body[len(opening) : -len(close)].split(f"\r\n--{boundary}\r\n".encode()):
        head, separator, content = raw.partition(b"\r\n\r\n")
        assert separator
        fields = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n"))
        parts.append(({key.lower(): value for key, value in fields.items()}, content))
    return parts


def test_no_range_sends_the_whole_representation(harness: Harness, blob: Blob) -> None:
    response = harness.get()
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-length"] == str(LENGTH)
    assert response.headers["content-type"] == MEDIA_TYPE
    assert "content-range" not in response.headers
    _common_headers(response)
    assert blob.calls == [(0, LENGTH)]


def test_blocking_reads_run_off_the_event_loop(harness: Harness, blob: Blob) -> None:
    harness.get({"Range": "bytes=0-0,-1"})
    harness.get({"Range": "bytes=5-9"})
    harness.get()
    assert blob.on_event_loop == [False] * 4


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-499", 0, 499),
        ("bytes=500-999", 500, 999),
        ("bytes=-500", LENGTH - 500, LENGTH - 1),
        ("bytes=9500-", 9500, LENGTH - 1),
        ("bytes=0-", 0, LENGTH - 1),
        ("bytes=0-0", 0, 0),
        ("bytes=123-99999999999999", 123, LENGTH - 1),
        ("bytes=500-600,601-999", 500, 999),
        (f"bytes={LENGTH}-,0-1", 0, 1),
    ],
)
def test_one_range_is_a_206(
    harness: Harness, blob: Blob, header: str, start: int, end: int
) -> None:
    response = harness.get(headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {start}-{end}/{LENGTH}"
    assert response.headers["content-length"] == str(end - start + 1)
    assert response.headers["content-type"] == MEDIA_TYPE
    assert response.content == DATA[start : end + 1]
    _common_headers(response)
    # Only the span is read, never the whole blob.
    assert blob.calls == [(start, end - start + 1)]


@pytest.mark.parametrize(
    ("header", "spans"),
    [
        ("bytes=0-0,-1", [(0, 0), (LENGTH - 1, LENGTH - 1)]),
        ("bytes=0-999,4500-5499,-1000", [(0, 999), (4500, 5499), (LENGTH - 1000, LENGTH - 1)]),
        ("bytes=10-20,0-5,15-30", [(10, 30), (0, 5)]),
        ("bytes=0-2499,2500-4999,6000-", [(0, 4999), (6000, LENGTH - 1)]),
        (
            "bytes=" + ",".join(f"{i * 100}-{i * 100 + 9}" for i in range(MAX_RANGES)),
            [(i * 100, i * 100 + 9) for i in range(MAX_RANGES)],
        ),
    ],
)
def test_several_ranges_are_a_multipart_206(
    harness: Harness, blob: Blob, header: str, spans: Spans
) -> None:
    response = harness.get(headers={"Range": header})
    assert response.status_code == 206
    assert "content-range" not in response.headers
    assert response.headers["content-length"] == str(len(response.content))
    _common_headers(response)
    parts = _parse_byteranges(response.headers["content-type"], response.content)
    assert [
        (fields["content-range"], fields["content-type"], content) for fields, content in parts
    ] == [
        (f"bytes {start}-{end}/{LENGTH}", MEDIA_TYPE, DATA[start : end + 1]) for start, end in spans
    ]
    assert blob.calls == [(start, end - start + 1) for start, end in spans]


def test_multipart_boundaries_differ_between_responses(harness: Harness) -> None:
    first = harness.get(headers={"Range": "bytes=0-0,-1"})
    second = harness.get(headers={"Range": "bytes=0-0,-1"})
    assert first.headers["content-type"] != second.headers["content-type"]
    assert len(first.content) == len(second.content)


@pytest.mark.parametrize(
    "header", ["bytes=20000-", f"bytes={LENGTH}-", "bytes=-0", f"bytes={LENGTH}-,-0"]
)
def test_unsatisfiable_is_a_416(harness: Harness, blob: Blob, header: str) -> None:
    response = harness.get(headers={"Range": header, "Host": "archive.test"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{LENGTH}"
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["content-length"] == str(len(response.content))
    assert str(LENGTH) in response.text
    assert response.headers["warning"].startswith('299 archive.test: "')
    # A 416 answers the Range header, which is no cache key: no freshness is passed on.
    _common_headers(response, cached=False)
    assert blob.calls == []


@pytest.mark.parametrize(
    "header",
    [
        "bytes=5-2",
        "items=0-1",
        "bytes=",
        "bytes=a-b",
        "bytes=" + ",".join(f"{2 * i}-{2 * i}" for i in range(MAX_RANGES + 1)),
        "bytes=0-" + "1" * MAX_RANGE_HEADER_LENGTH,
    ],
)
def test_ignored_range_is_a_200(harness: Harness, blob: Blob, header: str) -> None:
    response = harness.get(headers={"Range": header})
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-length"] == str(LENGTH)
    assert "content-range" not in response.headers
    assert blob.calls == [(0, LENGTH)]


@pytest.mark.parametrize(
    ("if_range", "header", "status"),
    [
        (ETAG, "bytes=0-9", 206),
        (LAST_MODIFIED, "bytes=0-9", 206),
        (f"W/{ETAG}", "bytes=0-9", 200),
        ('"stale"', "bytes=0-9", 200),
        ("Thu, 22 Oct 2015 07:28:00 GMT", "bytes=0-9", 200),
        ("", "bytes=0-9", 200),
        # A failed If-Range sends the whole even for a range that could not be satisfied.
        ('"stale"', "bytes=20000-", 200),
        (ETAG, "bytes=20000-", 416),
        (ETAG, "bytes=0-0,-1", 206),
    ],
)
def test_if_range(harness: Harness, if_range: str, header: str, status: int) -> None:
    response = harness.get(headers={"Range": header, "If-Range": if_range})
    assert response.status_code == status
    if status == 200:
        assert response.content == DATA
    elif status == 206 and "," not in header:
        assert response.content == DATA[:10]


def test_if_range_without_range_is_ignored(harness: Harness) -> None:
    response = harness.get(headers={"If-Range": '"stale"'})
    assert response.status_code == 200
    assert response.content == DATA


@pytest.mark.parametrize("header", [None, "bytes=0-9", "bytes=0-0,-1", "bytes=20000-"])
def test_head_describes_the_whole_and_reads_nothing(
    harness: Harness, blob: Blob, header: str | None
) -> None:
    response = harness.request("HEAD", headers={"Range": header} if header else {})
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(LENGTH)
    assert response.headers["content-type"] == MEDIA_TYPE
    assert "content-range" not in response.headers
    _common_headers(response)
    assert blob.calls == []


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 200), ("bytes=-5", 200), ("bytes=0-,-1", 200), ("bytes=0-", 416), ("bytes=-0", 416)],
)
def test_empty_representation(header: str | None, status: int) -> None:
    empty = Blob(b"")
    response = Harness(empty).get(headers={"Range": header} if header else {})
    assert response.status_code == status
    if status == 200:
        assert response.content == b""
        assert response.headers["content-length"] == "0"
        assert empty.calls == []
    else:
        assert response.headers["content-range"] == "bytes */0"


def test_callers_framing_headers_never_win() -> None:
    harness = Harness(
        Blob(DATA),
        extra={
            "Content-Type": "text/html",
            "content-length": "1",
            "Content-Range": "x",
            "X-A": "b",
        },
    )
    response = harness.get(headers={"Range": "bytes=0-9"})
    assert response.headers["content-type"] == MEDIA_TYPE
    assert response.headers["content-length"] == "10"
    assert response.headers["content-range"] == f"bytes 0-9/{LENGTH}"
    assert response.headers["x-a"] == "b"
    assert response.headers.get_list("content-type") == [MEDIA_TYPE]
    assert "vary" not in response.headers


def test_a_longer_blob_is_cut_to_the_declared_length() -> None:
    harness = Harness(Blob(DATA, excess=b"spill"))
    whole = harness.get()
    assert whole.content == DATA
    multi = harness.get(headers={"Range": "bytes=0-0,-1"})
    parts = _parse_byteranges(multi.headers["content-type"], multi.content)
    assert [content for _, content in parts] == [DATA[:1], DATA[-1:]]


@pytest.mark.parametrize("header", [None, "bytes=0-4999", "bytes=0-0,-1"])
def test_a_shorter_blob_fails_the_response(header: str | None) -> None:
    harness = Harness(Blob(DATA, shortfall=1))
    with pytest.raises(StorageError, match="1 bytes short"):
        harness.get(headers={"Range": header} if header else {})


def test_negative_length_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        range_response({}, length=-1, etag=ETAG, media_type=MEDIA_TYPE, read=Blob(b"").read)


# --- PartsResponse ----------------------------------------------------------------------------


def test_parts_response_sends_each_piece_under_one_content_length() -> None:
    messages: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        messages.append(message)

    payload = b"x" * 1000
    response = PartsResponse(
        [b"--b\r\n\r\n", payload, b"", b"\r\n--b--\r\n"],
        media_type="multipart/related",
        headers={"ETag": '"e"', "Content-Length": "1"},
    )
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    asyncio.run(response(scope, receive, send))  # type: ignore[arg-type]
    start, *bodies = messages
    headers = dict(start["headers"])  # type: ignore[call-overload]
    # A caller's Content-Length never contradicts the pieces sent; empty pieces are skipped.
    assert headers[b"content-length"] == str(len(payload) + 7 + 9).encode()
    assert headers[b"etag"] == b'"e"'
    assert [message["more_body"] for message in bodies] == [True, True, False]
    assert bodies[1]["body"] is payload  # sent as it is, never copied into a joined body
    assert b"".join(message["body"] for message in bodies) == (  # type: ignore[misc]
        b"--b\r\n\r\n" + payload + b"\r\n--b--\r\n"
    )


def test_parts_response_without_pieces_is_an_empty_body() -> None:
    messages: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        messages.append(message)

    response = PartsResponse([], media_type="application/dicom")
    asyncio.run(response({"type": "http"}, None, send))  # type: ignore[arg-type]
    assert dict(messages[0]["headers"])[b"content-length"] == b"0"  # type: ignore[call-overload]
    assert messages[1] == {"type": "http.response.body", "body": b""}
