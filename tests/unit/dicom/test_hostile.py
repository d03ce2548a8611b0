"""Hostile files and requests: nesting bombs, deflate bombs, pixel claims, limits.

Every refusal must come before the expensive or recursive work it protects against: the
nesting and inflation checks run on raw bytes, without recursion and in bounded memory,
before pydicom parses anything.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import time
import tracemalloc
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from dicomweb_server.api.errors import warning_value
from dicomweb_server.api.limits import QueryStringLimitMiddleware
from dicomweb_server.api.multipart import PartEnd, read_multipart
from dicomweb_server.dicom.guards import (
    DEFAULT_MAX_SEQUENCE_DEPTH,
    StructureError,
    check_nesting,
    inflate,
    read_file_meta,
)
from dicomweb_server.dicom.parse import CANNOT_UNDERSTAND, InvalidInstance, parse_instance
from dicomweb_server.errors import BadRequest, PayloadTooLarge
from dicomweb_server.imaging.transcode import TranscodeError, transcode
from dicomweb_server.services.pixels import check_pixel_budget
from dicomweb_server.settings import Settings
from tests.dicom_files import bundled_path, make_ct

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CONTENT_SEQUENCE = 0x0040A730  # SQ in the dictionary
CODE_VALUE = 0x00080100  # SH
PRIVATE_CREATOR = 0x00410010
PRIVATE_SEQUENCE = 0x00411010  # unknown creator: UN for pydicom
ITEM, ITEM_END, SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
UNDEFINED = 0xFFFFFFFF


def uri(study: str, series: str, instance: str, path: str) -> str:
    return f"/{path}"


def parse(path: Path, **limits: int) -> Any:
    return parse_instance(path, bulk_data_threshold=1024, bulk_uri=uri, **limits)


# --- building raw data sets ----------------------------------------------------------------


@dataclass(frozen=True)
class Encoding:
    implicit: bool
    little: bool
    syntax: str


EXPLICIT_LE = Encoding(False, True, ExplicitVRLittleEndian)
IMPLICIT_LE = Encoding(True, True, ImplicitVRLittleEndian)
EXPLICIT_BE = Encoding(False, False, ExplicitVRBigEndian)
ENCODINGS = [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE]


def element(tag: int, vr: str, value: bytes, enc: Encoding, length: int | None = None) -> bytes:
    end = "<" if enc.little else ">"
    size = len(value) if length is None else length
    head = struct.pack(f"{end}HH", tag >> 16, tag & 0xFFFF)
    if enc.implicit:
        return head + struct.pack(f"{end}L", size) + value
    if vr in ("SQ", "UN", "OB", "OW", "UT"):
        return head + vr.encode() + b"\0\0" + struct.pack(f"{end}L", size) + value
    return head + vr.encode() + struct.pack(f"{end}H", size) + value


def marker(tag: tuple[int, int], length: int, enc: Encoding) -> bytes:
    return struct.pack("<HHL" if enc.little else ">HHL", *tag, length)


def item(content: bytes, defined: bool, enc: Encoding) -> bytes:
    if defined:
        return marker(ITEM, len(content), enc) + content
    return marker(ITEM, UNDEFINED, enc) + content + marker(ITEM_END, 0, enc)


def sequence(tag: int, items: list[bytes], defined: bool, enc: Encoding, vr: str = "SQ") -> bytes:
    body = b"".join(items)
    if defined:
        return element(tag, vr, body, enc)
    return element(tag, vr, body, enc, UNDEFINED) + marker(SEQUENCE_END, 0, enc)


def nested(depth: int, enc: Encoding, *, defined: bool, tag: int = CONTENT_SEQUENCE) -> bytes:
    """`depth` sequences, each the only element of its parent's only item."""
    inner = element(CODE_VALUE, "SH", b"X ", enc)
    for _ in range(depth):
        inner = sequence(tag, [item(inner, defined, enc)], defined, enc)
    return inner


def part10(
    enc: Encoding, tail: bytes = b"", sop_class: str = "1.2.840.10008.5.1.4.1.1.88.11"
) -> bytes:
    """A minimal instance in `enc`, with `tail` (encoded likewise) appended to its data set."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = enc.syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue() + tail


def deflated_part10(dataset_bytes: bytes, stream: bytes | None = None) -> bytes:
    """A deflated instance of the (explicit VR little endian) data set `dataset_bytes`
    appended to fresh identifying UIDs, or with the deflate `stream` given as is."""
    plain = part10(EXPLICIT_LE)
    meta_end = read_file_meta(io.BytesIO(plain)).dataset_offset
    ds = pydicom.dcmread(io.BytesIO(plain))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    if stream is None:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        stream = compressor.compress(plain[meta_end:] + dataset_bytes) + compressor.flush()
    return plain[:132] + meta.getvalue() + stream


def identifying_elements() -> bytes:
    plain = part10(EXPLICIT_LE)
    return plain[read_file_meta(io.BytesIO(plain)).dataset_offset :]


def write(tmp_path: Path, data: bytes, name: str = "part.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(path: Path, **limits: int) -> InvalidInstance:
    with pytest.raises(InvalidInstance) as caught:
        parse(path, **limits)
    return caught.value


# --- sequence nesting --------------------------------------------------------------------


@pytest.mark.parametrize("enc", ENCODINGS, ids=["explicit", "implicit", "big-endian"])
@pytest.mark.parametrize("defined", [True, False], ids=["defined", "undefined"])
def test_200_nested_sequences_are_refused_before_pydicom_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enc: Encoding, defined: bool
) -> None:
    path = write(tmp_path, part10(enc, nested(200, enc, defined=defined)))
    assert path.stat().st_size < 12_000

    def no_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pydicom must not read a file refused for its nesting")

    monkeypatch.setattr(pydicom, "dcmread", no_parse)
    error = refused(path)
    assert error.failure_reason == CANNOT_UNDERSTAND
    assert "nested more than 32 levels" in error.reason


@pytest.mark.parametrize("enc", ENCODINGS, ids=["explicit", "implicit", "big-endian"])
@pytest.mark.parametrize("defined", [True, False], ids=["defined", "undefined"])
def test_the_depth_limit_is_exact(tmp_path: Path, enc: Encoding, defined: bool) -> None:
    limit = DEFAULT_MAX_SEQUENCE_DEPTH
    at_limit = write(tmp_path, part10(enc, nested(limit, enc, defined=defined)), "ok.dcm")
    parsed = parse(at_limit)
    node = parsed.metadata
    for _ in range(limit):
        node = node["0040A730"]["Value"][0]
    assert node["00080100"]["Value"] == ["X"]
    beyond = write(tmp_path, part10(enc, nested(limit + 1, enc, defined=defined)), "deep.dcm")
    assert "nested more than" in refused(beyond).reason
    assert "nested more than 3 levels" in refused(at_limit, max_sequence_depth=3).reason


def test_nesting_through_un_and_private_sequences_is_counted(tmp_path: Path) -> None:
    enc = EXPLICIT_LE
    implicit = IMPLICIT_LE
    # VR UN of undefined length is a sequence in implicit VR (PS3.5 6.2.2): pydicom parses it.
    inner = nested(40, implicit, defined=False)
    un = element(CONTENT_SEQUENCE, "UN", item(inner, False, implicit), enc, UNDEFINED)
    un += marker(SEQUENCE_END, 0, enc)
    assert "nested" in refused(write(tmp_path, part10(enc, un), "un.dcm")).reason
    # A private tag of unknown VR in implicit VR: assumed to be a sequence.
    private = nested(40, implicit, defined=True, tag=PRIVATE_SEQUENCE)
    creator = element(PRIVATE_CREATOR, "LO", b"ACME", implicit)
    data = part10(implicit, creator + private)
    assert "nested" in refused(write(tmp_path, data, "private.dcm")).reason


def test_200000_levels_take_no_recursion_and_little_time(tmp_path: Path) -> None:
    enc = EXPLICIT_LE
    # 200,000 undefined-length levels written as flat runs of headers (5.6 MB).
    opening = element(CONTENT_SEQUENCE, "SQ", b"", enc, UNDEFINED) + marker(ITEM, UNDEFINED, enc)
    closing = marker(ITEM_END, 0, enc) + marker(SEQUENCE_END, 0, enc)
    data = part10(enc, opening * 200_000 + closing * 200_000)
    start = read_file_meta(io.BytesIO(data)).dataset_offset
    path = write(tmp_path, data)
    outcomes: list[object] = []

    def run() -> None:
        try:
            # Without a limit in reach the walk goes all the way down and back up...
            check_nesting(
                io.BytesIO(data), start, len(data), implicit=False, little=True, max_depth=10**7
            )
            outcomes.append("walked")
            # ...and with one it stops at the first level beyond.
            outcomes.append(refused(path).reason)
        except BaseException as exc:  # pragma: no cover - reported below
            outcomes.append(exc)

    # A 256 KiB thread stack: any recursion per level would overflow it long before the end.
    threading.stack_size(256 * 1024)
    try:
        started = time.monotonic()
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    finally:
        threading.stack_size(0)
    assert outcomes[0] == "walked"
    assert "nested more than 32" in str(outcomes[1])
    assert time.monotonic() - started < 30


def test_nesting_in_the_file_meta_is_refused(tmp_path: Path) -> None:
    data = part10(EXPLICIT_LE)
    offset = read_file_meta(io.BytesIO(data)).dataset_offset
    bomb = sequence(0x00020999, [item(b"", False, EXPLICIT_LE)], False, EXPLICIT_LE)
    path = write(tmp_path, data[:offset] + bomb + data[offset:])
    assert "File Meta Information element (0002,0999)" in refused(path).reason


def test_nesting_in_a_command_set_is_counted(tmp_path: Path) -> None:
    data = part10(EXPLICIT_LE)
    offset = read_file_meta(io.BytesIO(data)).dataset_offset
    # pydicom reads group 0000 in implicit VR before the data set: an unknown tag of
    # undefined length that starts with an item is a sequence there too.
    command = nested(100, IMPLICIT_LE, defined=False, tag=0x00001234)
    path = write(tmp_path, data[:offset] + command + data[offset:])
    assert "nested" in refused(path).reason


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_the_file_meta_walk_ends_where_pydicom_starts_the_data_set(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["CT_small.dcm", "MR_small_implicit.dcm", "image_dfl.dcm"]))
    original = bytearray(bundled_path(name).read_bytes()[:2048])
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(132, 400))
        original[position] = data.draw(st.sampled_from([0, 0x41, 0x53, 0x55, 0xFF, 2]))
    try:
        ours = read_file_meta(io.BytesIO(original)).dataset_offset
    except StructureError:
        return
    fp = io.BytesIO(bytes(original))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pydicom.filereader.read_preamble(fp, False)
            pydicom.filereader._read_file_meta_info(fp)
        except Exception:
            return
    assert ours == fp.tell()


# The walker's depth must never be below what pydicom actually builds.


def pydicom_depth(ds: Dataset) -> int:
    deepest = 0
    for elem in ds:
        if elem.VR == "SQ":
            deepest = max(deepest, 1, *(1 + pydicom_depth(child) for child in elem.value))
    return deepest


def walker_depth(data: bytes, enc: Encoding) -> int:
    fp = io.BytesIO(data)
    start = read_file_meta(fp).dataset_offset
    for depth in range(200):
        try:
            check_nesting(
                fp, start, len(data), implicit=enc.implicit, little=enc.little, max_depth=depth
            )
        except StructureError:
            continue
        return depth
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Seq:
    kind: str  # "public", "private" or "un"
    defined: bool
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Item:
    defined: bool
    children: tuple[Seq, ...]


def trees() -> st.SearchStrategy[Seq]:
    kinds = st.sampled_from(["public", "private", "un"])
    items = st.deferred(
        lambda: st.builds(Item, st.booleans(), st.lists(sequences, max_size=2).map(tuple))
    )
    sequences = st.deferred(
        lambda: st.builds(Seq, kinds, st.booleans(), st.lists(items, max_size=2).map(tuple))
    )
    return sequences


def encode(seq: Seq, enc: Encoding) -> bytes:
    if seq.kind == "un" and not enc.implicit and enc.little:
        inner_enc, tag, vr = IMPLICIT_LE, CONTENT_SEQUENCE, "UN"  # UN content: implicit VR LE
    elif seq.kind == "private":
        inner_enc, tag, vr = enc, PRIVATE_SEQUENCE, "SQ"
    else:
        inner_enc, tag, vr = enc, CONTENT_SEQUENCE, "SQ"
    items = []
    for child in seq.items:
        content = element(CODE_VALUE, "SH", b"X ", inner_enc)
        if any(grandchild.kind == "private" for grandchild in child.children):
            content += element(PRIVATE_CREATOR, "LO", b"ACME", inner_enc)
        for grandchild in child.children[:1]:  # one sequence per tag and item
            content += encode(grandchild, inner_enc)
        items.append(item(content, child.defined, inner_enc))
    creator = element(PRIVATE_CREATOR, "LO", b"ACME", enc) if seq.kind == "private" else b""
    return creator + sequence(tag, items, seq.defined, enc, vr)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(tree=trees(), enc=st.sampled_from(ENCODINGS))
def test_the_walker_never_sees_less_nesting_than_pydicom_builds(tree: Seq, enc: Encoding) -> None:
    data = part10(enc, encode(tree, enc))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        actual = pydicom_depth(ds)
    assert walker_depth(data, enc) >= actual


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_the_walker_never_sees_less_nesting_than_pydicom_in_mutated_files(
    data: st.DataObject,
) -> None:
    name = data.draw(st.sampled_from(["test-SR.dcm", "rtplan.dcm", "UN_sequence.dcm"]))
    original = bytearray(bundled_path(name).read_bytes())
    enc = EXPLICIT_LE if name != "rtplan.dcm" else IMPLICIT_LE
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(300, len(original) - 4))
        if data.draw(st.booleans()):
            original[position : position + 4] = data.draw(
                st.sampled_from([b"\xff\xff\xff\xff", b"\xfe\xff\x00\xe0", b"SQ\0\0", b"UN\0\0"])
            )
        else:
            original[position] ^= 1 << data.draw(st.integers(0, 7))
    mutant = bytes(original)
    try:
        read_file_meta(io.BytesIO(mutant))
    except StructureError:
        return  # refused before the data set is looked at
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            actual = pydicom_depth(pydicom.dcmread(io.BytesIO(mutant)))
        except Exception:
            return  # pydicom refuses it: parse_instance would too
    assert walker_depth(mutant, enc) >= actual


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_mutated_files_are_parsed_or_refused_never_crash(
    tmp_path: Path, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(["CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"]))
    original = bytearray(bundled_path(name).read_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(128, len(original) - 1))
        action = data.draw(st.sampled_from(["flip", "length", "cut", "vr"]))
        if action == "flip":
            original[position] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "length" and position + 4 <= len(original):
            original[position : position + 4] = struct.pack(
                "<L", data.draw(st.sampled_from([UNDEFINED, 0xFFFFFFFE, 0x7FFFFFFF, 1 << 20]))
            )
        elif action == "cut":
            del original[position:]
            if len(original) <= 200:
                break
        elif position + 2 <= len(original):
            original[position : position + 2] = data.draw(st.sampled_from([b"SQ", b"UN", b"\0\1"]))
    path = write(tmp_path, bytes(original), "mutant.dcm")
    with contextlib.suppress(InvalidInstance):
        parse(path)
    assert sorted(os.listdir(tmp_path)) == ["mutant.dcm"]


# --- deflated data sets ------------------------------------------------------------------


def zeros_bomb(size: int) -> bytes:
    """A deflated instance with an OB value of `size` zero bytes, deflated in about a
    millisecond per 16 MiB: repeated sync-flushed blocks of zeros are identical."""
    block = 1 << 24
    assert size % block == 0
    # Encapsulated Document (0042,0011) after the identifying UIDs.
    value_head = identifying_elements() + element(0x00420011, "OB", b"", EXPLICIT_LE, size)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(block)
    first = compressor.compress(value_head + zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
    second = compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
    third = compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert second == third
    return deflated_part10(b"", first + second * (size // block - 1) + compressor.flush())


def test_a_one_gigabyte_deflate_bomb_is_refused_quickly_in_bounded_memory(
    tmp_path: Path,
) -> None:
    data = zeros_bomb(1 << 30)
    assert len(data) < 1_100_000
    path = write(tmp_path, data)
    tracemalloc.start()
    started = time.monotonic()
    try:
        error = refused(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.failure_reason == CANNOT_UNDERSTAND
    assert "inflates to more than 268435456 bytes" in error.reason
    assert peak < 16 * 1024**2
    assert time.monotonic() - started < 10
    assert sorted(os.listdir(tmp_path)) == ["part.dcm"]


def test_deflated_data_sets_within_the_cap_are_read_from_a_bounded_copy(tmp_path: Path) -> None:
    # 16 MiB inflated: beyond the in-memory spool, so inflated into an anonymous file.
    path = write(tmp_path, zeros_bomb(1 << 24))
    parsed = parse(path)
    assert parsed.deflated
    assert parsed.metadata["00420011"] == {"vr": "OB", "BulkDataURI": "/00420011"}
    assert sorted(os.listdir(tmp_path)) == ["part.dcm"]
    assert "inflates to more than 1000 bytes" in refused(path, max_inflated_bytes=1000).reason


def test_the_bundled_deflated_file_is_read_as_pydicom_reads_it(tmp_path: Path) -> None:
    path = bundled_path("image_dfl.dcm")
    parsed = parse(path)
    ds = pydicom.dcmread(path)
    assert parsed.deflated and parsed.sop_instance_uid == ds.SOPInstanceUID
    assert parsed.metadata["00280010"]["Value"] == [ds.Rows]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda stream: stream[: len(stream) // 2], "truncated"),
        (lambda stream: b"\xff" * 16 + stream, "corrupt"),
        (lambda stream: b"\0\0" + stream, "does not start with a deflate stream"),
        (lambda stream: b"", "truncated"),
    ],
    ids=["truncated", "corrupt", "command-set", "empty"],
)
def test_broken_deflate_streams_are_refused(tmp_path: Path, damage: Any, reason: str) -> None:
    good = deflated_part10(element(CODE_VALUE, "SH", b"X ", EXPLICIT_LE) * 10)
    meta_end = read_file_meta(io.BytesIO(good)).dataset_offset
    path = write(tmp_path, good[:meta_end] + damage(good[meta_end:]))
    error = refused(path)
    assert error.failure_reason == CANNOT_UNDERSTAND
    assert reason in error.reason


def test_nesting_inside_a_deflated_data_set_is_counted(tmp_path: Path) -> None:
    data = deflated_part10(nested(200, EXPLICIT_LE, defined=False))
    assert "nested more than 32" in refused(write(tmp_path, data)).reason


def test_inflate_streams_in_bounded_chunks() -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = compressor.compress(bytes(50 << 20)) + compressor.flush()
    target = io.BytesIO()
    assert inflate(io.BytesIO(stream), target, 50 << 20) == 50 << 20
    assert inflate(io.BytesIO(stream), None, 50 << 20) == 50 << 20
    with pytest.raises(StructureError, match="more than"):
        inflate(io.BytesIO(stream), None, (50 << 20) - 1)


# --- pixel data claims ---------------------------------------------------------------------


def test_native_pixel_data_shorter_than_its_attributes_claim_is_refused(tmp_path: Path) -> None:
    data = make_ct(rows=64, columns=64, frames=4, pixel_data=bytes(64 * 64 * 2 * 3))
    error = refused(write(tmp_path, data))
    assert error.failure_reason == 0xA900
    assert "need 32768" in error.reason


@pytest.mark.parametrize("pixels", [0, 10, 64 * 64 - 2])
def test_deflated_pixel_data_is_checked_against_its_attributes_too(
    tmp_path: Path, pixels: int
) -> None:
    ds = pydicom.dcmread(bundled_path("image_dfl.dcm"))
    ds.Rows = ds.Columns = 64
    ds.PixelData = bytes(pixels)
    path = tmp_path / "short.dcm"
    ds.save_as(path)
    error = refused(path)
    assert error.failure_reason == 0xA900
    assert "Pixel Data holds" in error.reason
    assert sorted(os.listdir(tmp_path)) == ["short.dcm"]


def test_encapsulated_pixel_data_in_a_deflated_data_set_is_refused(tmp_path: Path) -> None:
    image = element(0x00280010, "US", b"\x01\x00", EXPLICIT_LE)
    image += element(0x00280011, "US", b"\x01\x00", EXPLICIT_LE)
    pixel_data = element(0x7FE00010, "OB", b"", EXPLICIT_LE, UNDEFINED)
    pixel_data += marker(ITEM, 0, EXPLICIT_LE) + marker(ITEM, 2, EXPLICIT_LE) + b"\0\0"
    pixel_data += marker(SEQUENCE_END, 0, EXPLICIT_LE)
    error = refused(write(tmp_path, deflated_part10(image + pixel_data)))
    assert error.reason == (
        f"encapsulated Pixel Data in native transfer syntax {DeflatedExplicitVRLittleEndian}"
    )


def encapsulated_claim(tmp_path: Path, rows: int, frames: int) -> Path:
    """RLE frames of `rows` x `rows` zeros: a few kilobytes claiming much more."""
    runs = b"\x81\x00" * (rows // 128) * rows
    frame = struct.pack("<16L", 1, 64, *([0] * 14)) + runs
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (
        generate_uid() for _ in range(3)
    )
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([frame] * frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / f"rle-{rows}-{frames}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_encapsulated_claims_are_held_to_the_decode_budget(tmp_path: Path) -> None:
    path = encapsulated_claim(tmp_path, 1280, 4)  # 6.5 M samples from a 100 KB file
    parsed = parse(path)  # fragment sizes cannot be checked against the decoded size...
    assert parsed.pixel is not None and parsed.pixel.number_of_frames == 4
    attributes = pydicom.dcmread(path, stop_before_pixels=True)
    archive: Any = SimpleNamespace(settings=Settings(max_render_pixels=2_000_000))
    check_pixel_budget(archive, attributes, frames=1)  # ...but every decode is budgeted
    with pytest.raises(BadRequest, match="6553600 pixel samples"):
        check_pixel_budget(archive, attributes)
    with pytest.raises(TranscodeError, match="6553600 pixel samples"):
        transcode(path, ExplicitVRLittleEndian, max_pixels=2_000_000)
    assert len(transcode(path, ExplicitVRLittleEndian, max_pixels=10_000_000)) > 6_553_600


# --- request limits ------------------------------------------------------------------------


def test_warning_values_carry_only_printable_ascii() -> None:
    request = Request({"type": "http", "headers": [(b"host", b"example.org")]})
    value = warning_value(request, 'bad UID "\ufffd\ufffd\x00\r\n\t\\"')
    value.encode("ascii")
    assert value == '299 example.org: "bad UID \\"\\\\ufffd\\\\ufffd    \\\\\\""'


def test_the_query_string_limit_answers_414_with_a_warning() -> None:
    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = QueryStringLimitMiddleware(Starlette(routes=[Route("/", ok)]), max_bytes=300)

    async def run() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/?q=" + "x" * 298), await client.get("/?q=" + "x" * 299)

    fits, beyond = anyio.run(run)
    assert fits.status_code == 200
    assert beyond.status_code == 414
    assert "longer than 300 bytes" in beyond.headers["warning"]
    assert beyond.headers["warning"].startswith("299 test: ")


def test_the_part_count_limit_is_413() -> None:
    body = b"".join(b"--b\r\n\r\nX\r\n" for _ in range(6)) + b"--b--\r\n"

    async def count(limit: int) -> int:
        async def chunks() -> Any:
            yield body

        return sum(
            [
                isinstance(event, PartEnd)
                async for event in read_multipart(chunks(), "b", max_parts=limit)
            ]
        )

    assert anyio.run(count, 6) == 6
    with pytest.raises(PayloadTooLarge, match="more than 5 parts"):
        anyio.run(count, 5)
