"""Fuzzing a running archive: hostile STOW bodies, query strings, paths and headers.

A deterministic mutation corpus over pydicom's bundled files (bit flips, truncation, huge
lengths, bad VRs, spliced files, nesting and deflate bombs) and broken multipart framing is
POSTed to a real server, and hypothesis drives QIDO query strings and WADO paths, Accept and
Range headers. Whatever is sent, the server must answer below 500, stay up, log no unhandled
exception, leave no staging file behind and keep every instance stored before the fuzzing
byte for byte.
"""

from __future__ import annotations

import http.client
import io
import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement

from tests.dicom_files import (
    bundled_bytes,
    dataset_from_bytes,
    multipart,
    split_multipart,
    stow_content_type,
)
from tests.e2e.server import ServerProcess, staged_files
from tests.unit.dicom.test_hostile import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    deflated_part10,
    nested,
    part10,
    zeros_bomb,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
BASELINE = [
    "CT_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle_2frame.dcm",
    "image_dfl.dcm",
    "rtplan.dcm",
    "waveform_ecg.dcm",
    "examples_palette.dcm",
    "liver_1frame.dcm",
]
MAX_PARTS = 40
FUZZ_ENV = {
    "DICOMWEB_AUTH": "off",
    "DICOMWEB_MAX_PARTS_PER_REQUEST": str(MAX_PARTS),
    "DICOMWEB_MAX_INFLATED_BYTES": str(8 * 1024**2),
    "DICOMWEB_MAX_REQUEST_BYTES": str(256 * 1024**2),
}
HYPOTHESIS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass(frozen=True, repr=False)
class Stored:
    name: str
    data: bytes
    study: str
    series: str
    instance: str

    @property
    def path(self) -> str:
        return f"/studies/{self.study}/series/{self.series}/instances/{self.instance}"


@dataclass(repr=False)
class Fuzzed:
    server: ServerProcess
    baseline: list[Stored]
    client: httpx.Client


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    """A server with the baseline instances stored, before any hostile request."""
    server = ServerProcess(tmp_path_factory.mktemp("fuzz") / "data", env=FUZZ_ENV)
    server.start()
    baseline: list[Stored] = []
    seen: set[str] = set()
    for name in BASELINE:
        data = bundled_bytes(name)
        ds = dataset_from_bytes(data)
        if ds.SOPInstanceUID in seen:
            continue
        seen.add(ds.SOPInstanceUID)
        baseline.append(
            Stored(name, data, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        )
    client = httpx.Client(base_url=server.root, timeout=120)
    try:
        response = client.post(
            "/studies",
            content=multipart([stored.data for stored in baseline]),
            headers={"Content-Type": stow_content_type(), "Accept": "application/dicom+json"},
        )
        assert response.status_code == 200, response.text
        yield Fuzzed(server, baseline, client)
    finally:
        client.close()
        server.stop()


def check(response: httpx.Response) -> httpx.Response:
    request = response.request
    assert response.status_code < 500, (
        f"{request.method} {request.url} -> {response.status_code}: {response.text[:300]}"
    )
    return response


def assert_unharmed(fuzzed: Fuzzed) -> None:
    """Up, no unhandled exception, nothing staged, every baseline instance as stored."""
    server = fuzzed.server
    assert server.process is not None and server.process.poll() is None, server.log()
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    # Unhandled exceptions (uvicorn's "ERROR:") and the archive's own errors; pydicom logs
    # the codec failures it recovers from, which are not the server's.
    errors = [
        line
        for line in server.log().splitlines()
        if line.startswith(("ERROR:", "ERROR dicomweb_server", "CRITICAL"))
    ]
    assert errors == [], errors
    assert staged_files(server.data_dir) == []
    with httpx.Client(base_url=server.root, timeout=60) as client:
        for stored in fuzzed.baseline:
            response = client.get(stored.path, headers={"Accept": ANY_SYNTAX})
            assert response.status_code == 200, (stored.name, response.text)
            parts = list(split_multipart(response.content, response.headers["content-type"]))
            assert [content for _, content in parts] == [stored.data], stored.name
            metadata = client.get(stored.path + "/metadata")
            assert metadata.status_code == 200, (stored.name, metadata.text)


# --- the mutation corpus -----------------------------------------------------------------


def element_offsets(data: bytes) -> list[tuple[int, bool, bool]]:
    """(value offset, explicit VR, 4-byte length) of each top-level element."""
    ds = pydicom.dcmread(io.BytesIO(data), defer_size=0)
    implicit = ds.original_encoding[0] is True
    offsets = []
    for elem in ds._dict.values():
        if isinstance(elem, RawDataElement) and elem.value_tell > 132:
            long = implicit or elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UN", "UT")
            offsets.append((elem.value_tell, not implicit, long))
    return offsets


def mutate(rng: random.Random, data: bytes, offsets: list[tuple[int, bool, bool]]) -> bytes:
    out = bytearray(data)
    operation = rng.choice(
        ["flip", "truncate", "length", "vr", "insert", "duplicate", "zero", "splice"]
    )
    size = len(out)
    if operation == "flip":
        for _ in range(rng.randint(1, 16)):
            out[rng.randrange(128, size)] ^= 1 << rng.randrange(8)
    elif operation == "truncate":
        del out[rng.randrange(128, size) :]
    elif operation == "length" and offsets:
        value, _, long = rng.choice(offsets)
        if long:
            huge = rng.choice([0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 0x10000000, size * 2, 1])
            out[value - 4 : value] = struct.pack("<L", huge)
        else:
            out[value - 2 : value] = struct.pack("<H", rng.choice([0xFFFF, 0xFFFE, 1]))
    elif operation == "vr" and offsets:
        value, explicit, long = rng.choice(offsets)
        at = value - (12 if long else 8) + 4
        if explicit and at > 132:
            out[at : at + 2] = rng.choice([b"SQ", b"UN", b"OB", b"XX", b"\0\0", b"ab", b"UT"])
    elif operation == "insert":
        at = rng.randrange(132, size)
        out[at:at] = rng.randbytes(rng.randint(1, 64))
    elif operation == "duplicate":
        start = rng.randrange(132, size)
        piece = out[start : start + rng.randint(8, 4096)]
        at = rng.randrange(132, size)
        out[at:at] = piece
    elif operation == "zero":
        start = rng.randrange(132, size)
        out[start : start + rng.randint(1, 512)] = bytes(min(512, size - start))[:512]
    else:
        other = bundled_bytes(rng.choice(BASELINE))
        out = out[: rng.randrange(132, size)] + other[rng.randrange(132, len(other)) :]
    return bytes(out)


def renamed(rng: random.Random, data: bytes) -> bytes:
    """`data` under fresh (seeded) UIDs, so its mutants may be stored and then read back."""
    ds = dataset_from_bytes(data)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        f"2.25.{rng.getrandbits(120)}" for _ in range(3)
    )
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def corpus(seed: int, count: int) -> list[bytes]:
    """Mutants of the baseline files: half keep their UIDs (so must never replace what is
    stored), half get fresh ones (so some are stored, and then read back)."""
    rng = random.Random(seed)
    sources = {name: bundled_bytes(name) for name in BASELINE}
    out = []
    for index in range(count):
        data = sources[rng.choice(BASELINE)]
        if index % 2:
            data = renamed(rng, data)
        offsets = element_offsets(data)
        for _ in range(1 if index % 2 else rng.randint(1, 3)):
            data = mutate(rng, data, offsets)
        out.append(data)
    return out


def bombs() -> list[bytes]:
    return [
        part10(EXPLICIT_LE, nested(200, EXPLICIT_LE, defined=False)),
        part10(EXPLICIT_LE, nested(500, EXPLICIT_LE, defined=True)),
        part10(IMPLICIT_LE, nested(300, IMPLICIT_LE, defined=False)),
        deflated_part10(nested(200, EXPLICIT_LE, defined=False)),
        zeros_bomb(64 * 1024**2),  # inflates 8 times beyond the server's cap
    ]


def stow(client: httpx.Client, parts: list[bytes]) -> httpx.Response:
    return check(
        client.post(
            "/studies",
            content=multipart(parts),
            headers={"Content-Type": stow_content_type(), "Accept": "application/dicom+json"},
        )
    )


READ_BACK_ACCEPTS = [
    ANY_SYNTAX,
    'multipart/related; type="application/dicom"',  # re-encoded to Explicit VR Little Endian
    "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.5",
    "application/zip",
]


def read_back(client: httpx.Client, retrieve_url: str) -> None:
    """Every representation of a stored (mutated) instance answers below 500, completely."""
    base = httpx.URL(retrieve_url).path.removeprefix("/dicom-web")
    for accept in READ_BACK_ACCEPTS:
        check(client.get(base, headers={"Accept": accept}))
    metadata = check(client.get(base + "/metadata"))
    for suffix, accept in [
        ("/frames/1", 'multipart/related; type="application/octet-stream"; transfer-syntax=*'),
        ("/frames/1", "multipart/related; type=application/octet-stream"),
        ("/rendered", "image/png"),
        ("/thumbnail", "image/jpeg"),
    ]:
        check(client.get(base + suffix, headers={"Accept": accept}))
    if metadata.status_code == 200:
        uris = [
            value["BulkDataURI"]
            for value in metadata.json()[0].values()
            if isinstance(value, dict) and "BulkDataURI" in value
        ]
        for uri in uris[:3]:
            path = httpx.URL(uri).path.removeprefix("/dicom-web")
            check(client.get(path, headers={"Accept": "multipart/related; type=*/*"}))
            check(client.get(path, headers={"Accept": "*/*", "Range": "bytes=2-9"}))


def test_mutated_and_hostile_instances(fuzzed: Fuzzed) -> None:
    mutants = corpus(seed=20240611, count=400)
    client = fuzzed.client
    stored: list[str] = []
    for start in range(0, len(mutants), 8):
        response = stow(client, mutants[start : start + 8])
        assert response.status_code in (200, 202, 409), response.text
        body = response.json()
        assert "00081198" in body or response.status_code == 200
        for item in body.get("00081199", {}).get("Value", []):
            stored.append(item["00081190"]["Value"][0])
    for data in mutants[:40]:
        assert stow(client, [data]).status_code in (200, 202, 409)
    for bomb in bombs():
        response = stow(client, [bomb])
        assert response.status_code == 409, response.text
        failed = response.json()["00081198"]["Value"][0]
        assert failed["00081197"]["Value"] == [0xC000]
        assert "nested more than" in response.headers["warning"] or (
            "inflates to more than" in response.headers["warning"]
        )
    known = {instance.path for instance in fuzzed.baseline}
    fresh = [url for url in stored if httpx.URL(url).path.removeprefix("/dicom-web") not in known]
    assert len(fresh) >= 20  # enough mutants were stored to make reading them back a test
    for url in fresh:
        read_back(client, url)
    assert_unharmed(fuzzed)


# --- broken multipart --------------------------------------------------------------------


def broken_bodies() -> list[tuple[str, bytes, tuple[int, ...]]]:
    good = bundled_bytes("CT_small.dcm")
    ok_type = stow_content_type("b0")
    framed = multipart([good], boundary="b0")
    header_bomb = b"--b0\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n" + good + b"\r\n--b0--\r\n"
    many = multipart([b"x"] * (MAX_PARTS + 1), boundary="b0")
    rng = random.Random(7)
    cases: list[tuple[str, bytes, tuple[int, ...]]] = [
        (ok_type, framed[:-10], (200, 202, 400, 409)),  # no close delimiter
        (ok_type, framed[: len(framed) // 2], (400, 409)),  # ends inside the part
        (ok_type, framed.replace(b"--b0", b"--b1"), (400,)),  # wrong boundary
        (ok_type, b"", (400,)),
        (ok_type, b"garbage" * 20000, (400,)),
        (ok_type, b"--b0--\r\n", (400,)),  # no parts
        (ok_type, b"--b0\r\nno colon here\r\n\r\n" + good + b"\r\n--b0--", (400,)),
        (ok_type, header_bomb, (413,)),
        (ok_type, many, (413,)),
        (ok_type, framed.replace(b"\r\n", b"\n"), (400, 409)),
        (ok_type, framed.replace(b"\r\n", b"\r"), (400, 409)),
        (ok_type, b"--b0garbage\r\n\r\n" + good + b"\r\n--b0--", (400, 409)),
        (ok_type, b"--b0\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b0--\r\n", (409,)),
        (ok_type, b"--b0\r\nContent-Type: \xff\x00\r\n\r\nhello\r\n--b0--\r\n", (400, 409)),
        (ok_type, b"--b0\r\n\r\n" + good + b"\r\n--b0\r\n\r\n--b0--", (200, 202, 409)),
        ("multipart/related; boundary=", framed, (400,)),
        ("multipart/related; boundary=" + "b" * 201, framed, (400,)),
        ('multipart/related; type="application/dicom+json"; boundary=b0', framed, (415,)),
        ("application/dicom", good, (415,)),
        ("multipart/related; boundary=b0; type=", framed, (200, 415)),
        ('multipart/related; boundary="unterminated', framed, (400, 415)),
        ("", framed, (415,)),
    ]
    for _ in range(30):  # random damage in the framing around and inside the part headers
        body = bytearray(framed)
        for _ in range(rng.randint(1, 4)):
            at = rng.choice([rng.randrange(0, 64), rng.randrange(len(body) - 16, len(body))])
            body[at] = rng.randrange(256)
        cases.append((ok_type, bytes(body), (200, 202, 400, 409, 413)))
    return cases


def test_broken_multipart_bodies(fuzzed: Fuzzed) -> None:
    with httpx.Client(base_url=fuzzed.server.root, timeout=60) as client:
        for content_type, body, expected in broken_bodies():
            headers = {"Accept": "application/dicom+json"}
            if content_type:
                headers["Content-Type"] = content_type
            response = check(client.post("/studies", content=body, headers=headers))
            assert response.status_code in expected, (content_type, body[:80], response.text)
            if response.status_code >= 400:
                assert response.headers["warning"].startswith("299 ")
        # A chunked body (no Content-Length) in irregular chunks.
        body = multipart([bundled_bytes("CT_small.dcm")], boundary="b0")
        pieces = iter([body[:3], body[3:1000], body[1000:1001], body[1001:]])
        response = client.post(
            "/studies", content=pieces, headers={"Content-Type": stow_content_type("b0")}
        )
        assert check(response).status_code == 200
    # Raw requests an HTTP client would not send.
    raw_requests = [
        b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: "
        + stow_content_type("b0").encode()
        + b"\r\nContent-Length: 999999999999999\r\n\r\n",
        b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab",
        b"GET /dicom-web/studies/\xff\xfe/metadata HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /dicom-web/studies?PatientName=\xc3\xa9\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for raw in raw_requests:
        with socket.create_connection(("127.0.0.1", fuzzed.server.port), timeout=10) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            reply = sock.recv(64)
        if reply:  # a half-sent body may just be dropped
            status = int(reply.split(b" ", 2)[1])
            assert status < 500, (raw[:80], reply)
    assert_unharmed(fuzzed)


# --- query strings, paths and headers ------------------------------------------------------

QIDO_KEYS = [
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "Modality",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "SeriesNumber",
    "InstanceNumber",
    "StudyDescription",
    "ReferringPhysicianName",
    "00100010",
    "0020000D",
    "00080020",
    "00400275.00321060",
    "includefield",
    "limit",
    "offset",
    "fuzzymatching",
]
SPECIAL_VALUES = [
    "*",
    "?",
    "",
    "all",
    "true",
    "-1",
    "99999999999999999999999",
    "20200101-",
    "-20200101",
    "20200101-20191231",
    "1.2.3,1.2.4",
    "Doe^*",
    "\\",
    "%",
    "00100010,00100020",
    "1e309",
]
ACCEPTS = [
    "application/dicom+json",
    "application/dicom+xml",
    "application/json",
    "multipart/related; type=application/dicom+xml",
    ANY_SYNTAX,
    'multipart/related; type="application/dicom"',
    "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.4.80",
    'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    "multipart/related; type=image/jpeg",
    "application/zip",
    "image/png",
    "image/jpeg;q=0.5, image/png",
    "image/gif",
    "text/html",
    "*/*",
    "*/*;q=0",
    "",
]
text = st.text(st.characters(codec="utf-8"), max_size=40)
ascii_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
# What an HTTP client can send as a header value: no surrounding whitespace.
header_text = ascii_text.map(str.strip)


def query_string(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(key, safe='')}={quote(value, safe='*,^')}" for key, value in pairs)


@HYPOTHESIS
@given(
    level=st.sampled_from(
        [
            "/studies",
            "/series",
            "/instances",
            "/studies/{s}/series",
            "/studies/{s}/instances",
            "/studies/{s}/series/{r}/instances",
        ]
    ),
    pairs=st.lists(
        st.tuples(
            st.one_of(st.sampled_from(QIDO_KEYS), text),
            st.one_of(st.sampled_from(SPECIAL_VALUES), text, ascii_text),
        ),
        max_size=6,
    ),
    accept=st.one_of(st.sampled_from(ACCEPTS), header_text),
    stored=st.integers(0, 100),
)
def test_qido_query_strings(
    fuzzed: Fuzzed, level: str, pairs: list[tuple[str, str]], accept: str, stored: int
) -> None:
    target = fuzzed.baseline[stored % len(fuzzed.baseline)]
    path = level.format(s=target.study, r=target.series)
    headers = {"Accept": accept} if accept else {}
    check(fuzzed.client.get(f"{path}?{query_string(pairs)}", headers=headers))


def test_long_query_strings_get_414(fuzzed: Fuzzed) -> None:
    with httpx.Client(base_url=fuzzed.server.root, timeout=60) as client:
        response = check(client.get("/studies?PatientName=" + "A" * 8200))
        assert response.status_code == 414
        assert "DICOMWEB_MAX_QUERY_STRING_BYTES" in response.headers["warning"]
        assert check(client.get("/studies?PatientName=" + "A" * 8000)).status_code in (200, 204)
    assert_unharmed(fuzzed)


SUFFIXES = [
    "",
    "/metadata",
    "/rendered",
    "/thumbnail",
    "/frames/{f}",
    "/frames/{f}/rendered",
    "/bulk/{b}",
]
FRAME_LISTS = ["1", "2", "1,2", "0", "-1", "1,,2", "99999999999", "1" * 40, "a", "1,2,1,2,1"]
BULK_PATHS = ["7FE00010", "7fe00010", "00280010", "300A00B0/0/300A00C6", "../../etc", "ZZZZ"]
SEGMENTS = ["%2e%2e", "1.2.3%2F4", "1.2.3%00", "%C3%A9", "1" * 65, "01.2", "1..2", "%ff"]
RENDER_PARAMS = [
    "",
    "?quality=50",
    "?quality=500",
    "?viewport=64,64",
    "?viewport=0,0",
    "?viewport=100000,100000",
    "?viewport=10,10,5,5,1,1",
    "?window=40,400,linear",
    "?window=a,b,c",
    "?annotation=patient",
    "?iccprofile=srgb",
]


@HYPOTHESIS
@given(
    stored=st.integers(0, 100),
    depth=st.sampled_from(["study", "series", "instance"]),
    replace=st.one_of(st.none(), st.sampled_from(SEGMENTS), ascii_text),
    replace_at=st.integers(0, 2),
    suffix=st.sampled_from(SUFFIXES),
    frames=st.one_of(st.sampled_from(FRAME_LISTS), ascii_text),
    bulk=st.one_of(st.sampled_from(BULK_PATHS), ascii_text),
    params=st.sampled_from(RENDER_PARAMS),
    accept=st.one_of(st.sampled_from(ACCEPTS), header_text),
    byte_range=st.one_of(
        st.none(),
        st.sampled_from(["bytes=0-10", "bytes=-5", "bytes=5-", "bytes=10-0", "bytes=0-0,2-3"]),
        header_text,
    ),
)
def test_wado_paths_and_headers(
    fuzzed: Fuzzed,
    stored: int,
    depth: str,
    replace: str | None,
    replace_at: int,
    suffix: str,
    frames: str,
    bulk: str,
    params: str,
    accept: str,
    byte_range: str | None,
) -> None:
    target = fuzzed.baseline[stored % len(fuzzed.baseline)]
    segments = [target.study, target.series, target.instance][
        : {"study": 1, "series": 2, "instance": 3}[depth]
    ]
    if replace is not None:
        segments[min(replace_at, len(segments) - 1)] = quote(replace, safe="%")
    path = "/studies/" + "/series/".join(segments[:2])
    if len(segments) == 3:
        path += "/instances/" + segments[2]
    path += suffix.format(f=quote(frames, safe=","), b=quote(bulk, safe="/"))
    if "rendered" in suffix or "thumbnail" in suffix:
        path += params
    headers = {"Accept": accept} if accept else {}
    if byte_range is not None:
        headers["Range"] = byte_range
    response = check(fuzzed.client.get(path, headers=headers))
    if replace in SEGMENTS and suffix == "":
        assert response.status_code in (400, 404, 406), path


def test_path_segments_never_reach_the_store(fuzzed: Fuzzed) -> None:
    """Traversal and junk in every path segment answer 400 or 404, never 5xx or data.

    Sent with http.client, which (unlike httpx) sends ``..`` segments as they are.
    """
    stored = fuzzed.baseline[0]
    valid = [stored.study, stored.series, stored.instance]
    junk = [*SEGMENTS, "..", ".", "..%2F..%2F..%2Fetc%2Fpasswd", "%5C..%5Cindex.sqlite", "~"]
    connection = http.client.HTTPConnection("127.0.0.1", fuzzed.server.port, timeout=60)
    try:
        for position in range(3):
            for segment in junk:
                parts = list(valid)
                parts[position] = segment
                base = f"/dicom-web/studies/{parts[0]}/series/{parts[1]}/instances/{parts[2]}"
                for suffix in ["", "/metadata", "/frames/1", "/bulk/7FE00010", "/rendered"]:
                    for method in ("GET", "DELETE") if suffix == "" else ("GET",):
                        connection.request(method, base + suffix, headers={"Accept": "*/*"})
                        response = connection.getresponse()
                        response.read()
                        assert response.status in (400, 404, 405), (method, base + suffix)
    finally:
        connection.close()
    assert_unharmed(fuzzed)


def test_nothing_changed_after_fuzzing(fuzzed: Fuzzed) -> None:
    """Whatever ran before in this process, the archive is unharmed (also the final check
    when the tests above ran on this worker)."""
    assert_unharmed(fuzzed)
