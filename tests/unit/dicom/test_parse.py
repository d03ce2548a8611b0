"""Store-time parsing: validation, metadata, bulk locations and frame layouts."""

from __future__ import annotations

import contextlib
import random
import struct
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import orjson
import psutil
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.pixels.utils import get_expected_length, get_nr_frames
from pydicom.uid import (
    MPEG4HP41,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from dicomweb_server.dicom.json_model import BulkValue
from dicomweb_server.dicom.parse import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    InvalidInstance,
    ParsedInstance,
    parse_instance,
)
from dicomweb_server.dicom.pixel_layout import PixelLayout

from .test_json_model import (
    PYDICOM_FAILURES,
    bundled_files,
    element_at,
    file_id,
    is_part10,
    pydicom_reference,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

C000 = CANNOT_UNDERSTAND
A900 = DATA_SET_DOES_NOT_MATCH_SOP_CLASS
NOT_PART10 = (C000, "not a DICOM PS3.10 file")
NO_SOP_CLASS = (A900, "SOP Class UID (0008,0016)")
NO_STUDY = (A900, "Study Instance UID (0020,000D)")

# Every bundled file that must be refused, with the failure code and why.
EXPECTED_REJECTIONS: dict[str, tuple[int, str]] = {
    # Not PS3.10 files: no preamble + "DICM" (raw datasets, text, JSON, ICC profile, gzip).
    "ExplVR_BigEndNoMeta.dcm": NOT_PART10,
    "ExplVR_LitEndNoMeta.dcm": NOT_PART10,
    "no_meta.dcm": NOT_PART10,
    "rtstruct.dcm": NOT_PART10,
    "README.txt": NOT_PART10,
    "README": NOT_PART10,
    "FileInfo.txt": NOT_PART10,
    "crayons.icc": NOT_PART10,
    "test1.json": NOT_PART10,
    "test_PN.json": NOT_PART10,
    "rtplan.dump": NOT_PART10,
    "rtstruct.dump": NOT_PART10,
    "zipMR.gz": NOT_PART10,
    # File Meta Information without (0002,0010): the encoding is unknown.
    "meta_missing_tsyntax.dcm": (C000, "Transfer Syntax UID (0002,0010)"),
    # Truncated: Pixel Data / a sequence runs past the end of the file.
    "MR_truncated.dcm": (C000, "truncated"),
    "rtplan_truncated.dcm": (C000, "truncated"),
    # Not composite instances (media directories, fragments of datasets used by pydicom's
    # own tests): no SOP Class UID or no Study Instance UID.
    "DICOMDIR": NO_SOP_CLASS,
    "DICOMDIR-bigEnd": NO_SOP_CLASS,
    "DICOMDIR-empty.dcm": NO_SOP_CLASS,
    "DICOMDIR-implicit": NO_SOP_CLASS,
    "DICOMDIR-nooffset": NO_SOP_CLASS,
    "DICOMDIR-nopatient": NO_SOP_CLASS,
    "DICOMDIR-reordered": NO_SOP_CLASS,
    "UN_sequence.dcm": NO_SOP_CLASS,
    "chrSQEncoding.dcm": NO_SOP_CLASS,
    "chrSQEncoding1.dcm": NO_SOP_CLASS,
    "empty_charset_LEI.dcm": NO_SOP_CLASS,
    "nested_priv_SQ.dcm": NO_SOP_CLASS,
    "no_meta_group_length.dcm": NO_SOP_CLASS,
    "priv_SQ.dcm": NO_SOP_CLASS,
    "JPEGLSNearLossless_08.dcm": NO_STUDY,
    "JPEGLSNearLossless_16.dcm": NO_STUDY,
    "SC_rgb_jls_lossy_line.dcm": NO_STUDY,
    "SC_rgb_jls_lossy_sample.dcm": NO_STUDY,
    # Number of Frames is "1A": the Pixel Data cannot be matched to it.
    "badVR.dcm": (A900, "Number of Frames"),
}

BUNDLED = bundled_files()
DEFLATED = "1.2.840.10008.1.2.1.99"


def uri(study: str, series: str, instance: str, path: str) -> str:
    return f"/studies/{study}/series/{series}/instances/{instance}/bulk/{path}"


def parse(path: Path | str, threshold: int = 768) -> ParsedInstance:
    return parse_instance(path, bulk_data_threshold=threshold, bulk_uri=uri)


def tag_uri(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def strip_uris(json: dict[str, Any]) -> dict[str, Any]:
    """Replace our BulkDataURIs by their last path segment, as pydicom_reference writes."""
    out: dict[str, Any] = {}
    for key, attribute in json.items():
        attribute = dict(attribute)
        if "BulkDataURI" in attribute:
            attribute["BulkDataURI"] = tag_uri(attribute["BulkDataURI"])
        if attribute["vr"] == "SQ" and "Value" in attribute:
            attribute["Value"] = [strip_uris(item) for item in attribute["Value"]]
        out[key] = attribute
    return out


# --- bundled files -------------------------------------------------------------------------


def test_every_bundled_file_is_classified() -> None:
    names = {path.name for path in BUNDLED}
    assert set(EXPECTED_REJECTIONS) <= names
    accepted = [path for path in BUNDLED if path.name not in EXPECTED_REJECTIONS]
    assert len(accepted) > 90


@pytest.mark.parametrize("path", BUNDLED, ids=file_id)
def test_bundled_file_is_parsed_or_rejected(path: Path) -> None:
    expected = EXPECTED_REJECTIONS.get(path.name)
    if expected is None:
        parsed = parse(path)
        ds = pydicom.dcmread(path)
        assert parsed.sop_class_uid == ds.SOPClassUID
        assert parsed.sop_instance_uid == ds.SOPInstanceUID
        assert parsed.study_instance_uid == ds.StudyInstanceUID
        assert parsed.series_instance_uid == ds.SeriesInstanceUID
        assert parsed.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        assert parsed.deflated == (parsed.transfer_syntax_uid == DEFLATED)
        return
    code, text = expected
    with pytest.raises(InvalidInstance) as caught:
        parse(path)
    assert caught.value.failure_reason == code
    assert text in caught.value.reason
    assert str(caught.value) == caught.value.reason


ACCEPTED = [path for path in BUNDLED if path.name not in EXPECTED_REJECTIONS]


@pytest.mark.parametrize("path", ACCEPTED, ids=file_id)
def test_metadata_and_bulk_of_bundled_file(path: Path) -> None:
    parsed = parse(path, threshold=768)
    ds = pydicom.dcmread(path)
    reference, failed = pydicom_reference(ds, 768)
    assert failed == set(PYDICOM_FAILURES.get(path.name, {}))
    assert strip_uris(parsed.metadata) == reference
    prefix = (
        f"/studies/{parsed.study_instance_uid}/series/{parsed.series_instance_uid}"
        f"/instances/{parsed.sop_instance_uid}/bulk/"
    )
    uris = _bulk_uris(parsed.metadata)
    assert all(value.startswith(prefix) for value in uris)
    if parsed.deflated:
        assert parsed.bulk == ()
        assert parsed.pixel is None
        return
    assert sorted(prefix + bulk.path for bulk in parsed.bulk) == sorted(uris)
    data = path.read_bytes()
    for bulk in parsed.bulk:
        assert data[bulk.offset : bulk.offset + bulk.length] == element_at(ds, bulk.path)


def _bulk_uris(json: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for attribute in json.values():
        if "BulkDataURI" in attribute:
            found.append(attribute["BulkDataURI"])
        for item in attribute.get("Value", []) if attribute["vr"] == "SQ" else []:
            found.extend(_bulk_uris(item))
    return found


def _pixel_files() -> list[Path]:
    """Bundled files with Pixel Data that parse."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [
            path
            for path in BUNDLED
            if is_part10(path)
            and path.name not in EXPECTED_REJECTIONS
            and "PixelData" in pydicom.dcmread(path, defer_size=64)
        ]


PIXEL_FILES = _pixel_files()


def frames_from_layout(path: Path, layout: PixelLayout) -> list[bytes]:
    data = path.read_bytes()
    return [
        b"".join(data[offset : offset + length] for offset, length in layout.frame_ranges(index))
        for index in range(layout.number_of_frames)
    ]


def pydicom_frames(ds: Dataset) -> list[bytes]:
    frames = get_nr_frames(ds)
    if ds["PixelData"].is_undefined_length:
        extended = None
        if "ExtendedOffsetTable" in ds:
            extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        return list(
            generate_frames(ds.PixelData, number_of_frames=frames, extended_offsets=extended)
        )
    length = get_expected_length(ds) // frames
    return [ds.PixelData[index * length : (index + 1) * length] for index in range(frames)]


@pytest.mark.parametrize("path", PIXEL_FILES, ids=file_id)
def test_frames_of_bundled_file_match_pydicom(path: Path, tmp_path: Path) -> None:
    parsed = parse(path)
    ds = pydicom.dcmread(path)
    if parsed.deflated:
        assert parsed.pixel is None
        return
    layout = parsed.pixel
    assert layout is not None
    assert layout.number_of_frames == get_nr_frames(ds)
    assert layout.encapsulated == ds["PixelData"].is_undefined_length
    assert frames_from_layout(path, layout) == pydicom_frames(ds)
    data = path.read_bytes()
    value = data[layout.value_offset : layout.value_offset + layout.value_length]
    assert value == ds.PixelData
    pixel_bulk = [bulk for bulk in parsed.bulk if bulk.path == "7FE00010"]
    assert pixel_bulk == [
        BulkValue(
            "7FE00010", 0x7FE00010, ds["PixelData"].VR, layout.value_offset, layout.value_length
        )
    ]
    assert PixelLayout.from_json(orjson.loads(orjson.dumps(layout.to_json()))) == layout


def test_bundled_multiframe_files_are_covered() -> None:
    names = {path.name for path in PIXEL_FILES}
    # native multi-frame (rtdose, 15 frames), RLE and JPEG multi-frame, YBR_FULL_422 native
    assert {"rtdose.dcm", "SC_rgb_rle_2frame.dcm", "examples_ybr_color.dcm"} <= names
    assert "SC_ybr_full_422_uncompressed.dcm" in names


# --- generated instances ---------------------------------------------------------------------


def new_dataset(**image: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    for keyword, value in image.items():
        setattr(ds, keyword, value)
    return ds


def image(rows: int, columns: int, bits: int, frames: int, samples: int = 1) -> dict[str, Any]:
    return {
        "Rows": rows,
        "Columns": columns,
        "BitsAllocated": bits,
        "BitsStored": bits,
        "HighBit": bits - 1,
        "SamplesPerPixel": samples,
        "PixelRepresentation": 0,
        "PhotometricInterpretation": "MONOCHROME2" if samples == 1 else "RGB",
        "NumberOfFrames": frames,
    }


def write(
    tmp_path: Path,
    ds: Dataset,
    transfer_syntax: str = ExplicitVRLittleEndian,
    name: str = "x.dcm",
) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def set_encapsulated(ds: Dataset, value: bytes) -> None:
    ds.PixelData = value
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def patch(path: Path, old: bytes, new: bytes) -> None:
    """Replace a same-length byte string once (e.g. a UID in the File Meta Information)."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) >= 1
    path.write_bytes(data.replace(old, new, 1))


def item(data: bytes, tag: int = 0xFFFEE000) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(data)) + data


def jpeg_frame(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    body = bytes(rng.randrange(0, 0xFF) for _ in range(size))  # no 0xFF: no markers
    return b"\xff\xd8\xff\xe0" + body + b"\xff\xd9"


def raises(path: Path, code: int, text: str) -> InvalidInstance:
    with pytest.raises(InvalidInstance) as caught:
        parse(path)
    assert caught.value.failure_reason == code, caught.value.reason
    assert text in caught.value.reason
    return caught.value


class _Usage:
    peak_bytes = 0
    read_bytes = 0


class Measure:
    """Peak Python allocation (tracemalloc) and bytes read by the process (rchar)."""

    def __enter__(self) -> _Usage:
        self.usage = _Usage()
        self.process = psutil.Process()
        tracemalloc.start()
        self.start = self.process.io_counters().read_chars
        return self.usage

    def __exit__(self, *exc: object) -> None:
        self.usage.read_bytes = self.process.io_counters().read_chars - self.start
        self.usage.peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def test_large_native_multiframe_reads_only_the_header(tmp_path: Path) -> None:
    frames, rows, columns = 100, 512, 512
    ds = new_dataset(**image(rows, columns, 16, frames))
    frame_length = rows * columns * 2
    pixels = bytearray(frame_length * frames)
    for index in range(frames):
        pixels[index * frame_length : index * frame_length + 8] = struct.pack("<Q", index + 1)
    ds.PixelData = bytes(pixels)
    ds["PixelData"].VR = "OW"
    path = write(tmp_path, ds)
    del ds, pixels
    assert path.stat().st_size > 50_000_000

    with Measure() as usage:
        parsed = parse(path)
    assert usage.peak_bytes < 5_000_000
    assert usage.read_bytes < 1_000_000
    layout = parsed.pixel
    assert layout is not None
    assert (layout.encapsulated, layout.number_of_frames, layout.frame_length) == (
        False,
        frames,
        frame_length,
    )
    with path.open("rb") as fp:
        for index in (0, 1, 57, 99):
            ((offset, length),) = layout.frame_ranges(index)
            assert length == frame_length
            fp.seek(offset)
            assert struct.unpack("<Q", fp.read(8))[0] == index + 1
    assert parsed.metadata["7FE00010"]["BulkDataURI"].endswith("/bulk/7FE00010")


def test_large_encapsulated_file_scans_only_item_headers(tmp_path: Path) -> None:
    frames = [jpeg_frame(seed, 1000) + b"\0" * 99_000 for seed in range(400)]
    ds = new_dataset(**image(256, 256, 8, len(frames)))
    set_encapsulated(ds, encapsulate(frames, fragments_per_frame=2, has_bot=False))
    path = write(tmp_path, ds, JPEGBaseline8Bit)
    assert path.stat().st_size > 40_000_000

    with Measure() as usage:
        parsed = parse(path)
    assert usage.peak_bytes < 5_000_000
    # pydicom (buffered: up to 8 KiB per header), the bulk length and the layout (8 bytes
    # per header, plus 12 for start markers) each walk the 800 item headers: ~3.3 MB.
    assert usage.read_bytes < 8_000_000
    layout = parsed.pixel
    assert layout is not None
    assert layout.number_of_frames == 400
    assert all(len(fragments) == 2 for fragments in layout.fragments)
    data = path.read_bytes()
    for index in (0, 1, 399):
        got = b"".join(data[o : o + n] for o, n in layout.frame_ranges(index))
        assert got == frames[index]


@pytest.mark.parametrize(
    ("rows", "columns", "frames", "frame_length"),
    [(4, 4, 3, 2), (3, 3, 3, 0)],
    ids=["1-bit-aligned", "1-bit-unaligned"],
)
def test_one_bit_native_frames(
    tmp_path: Path, rows: int, columns: int, frames: int, frame_length: int
) -> None:
    ds = new_dataset(**image(rows, columns, 1, frames))
    total = (rows * columns * frames + 7) // 8
    ds.PixelData = bytes(range(1, total + 1))
    path = write(tmp_path, ds)
    layout = parse(path).pixel
    assert layout is not None
    assert layout.frame_length == frame_length
    if frame_length:
        assert layout.frame_ranges(1) == ((layout.value_offset + frame_length, frame_length),)
    else:  # frames are not byte-aligned: the whole value, the caller extracts the bits
        assert layout.frame_ranges(1) == ((layout.value_offset, layout.value_length),)


def test_odd_length_native_value_with_padding(tmp_path: Path) -> None:
    ds = new_dataset(**image(3, 3, 8, 1))
    ds.PixelData = bytes(range(9))  # written padded to 10 bytes
    path = write(tmp_path, ds)
    layout = parse(path).pixel
    assert layout is not None
    assert (layout.frame_length, layout.value_length) == (9, 10)


def test_short_native_pixel_data(tmp_path: Path) -> None:
    ds = new_dataset(**image(10, 10, 16, 2))
    ds.PixelData = b"\0" * 398
    raises(write(tmp_path, ds), A900, "Pixel Data holds 398 bytes")


def test_native_pixel_data_without_rows(tmp_path: Path) -> None:
    ds = new_dataset(**image(10, 10, 8, 1))
    del ds.Rows
    ds.PixelData = b"\0" * 100
    raises(write(tmp_path, ds), A900, "Rows (0028,0010)")


def _encapsulated_file(
    tmp_path: Path, frames: list[bytes], value: bytes, transfer_syntax: str = JPEGBaseline8Bit
) -> Path:
    ds = new_dataset(**image(8, 8, 8, len(frames)))
    set_encapsulated(ds, value)
    return write(tmp_path, ds, transfer_syntax)


def _check_frames(path: Path, expected: list[bytes]) -> PixelLayout:
    layout = parse(path).pixel
    assert layout is not None and layout.encapsulated
    assert frames_from_layout(path, layout) == expected
    ds = pydicom.dcmread(path)
    assert pydicom_frames(ds) == expected
    return layout


FRAMES = [jpeg_frame(seed, 50 + seed) for seed in range(5)]  # odd and even lengths


def test_extended_offset_table(tmp_path: Path) -> None:
    value, offsets, _ = encapsulate_extended(FRAMES)  # its lengths include the pad byte
    ds = new_dataset(**image(8, 8, 8, len(FRAMES)))
    set_encapsulated(ds, value)
    ds.ExtendedOffsetTable = offsets
    ds.ExtendedOffsetTableLengths = struct.pack("<5Q", *(len(frame) for frame in FRAMES))
    path = write(tmp_path, ds, JPEGBaseline8Bit)
    layout = _check_frames(path, FRAMES)
    # EOT lengths exclude the pad byte of odd-length frames (PS3.3 C.7.6.3.1.8).
    assert [frame[0][1] for frame in layout.fragments] == [len(frame) for frame in FRAMES]


def test_inconsistent_extended_offset_table_is_ignored(tmp_path: Path) -> None:
    value, _, lengths = encapsulate_extended(FRAMES)
    ds = new_dataset(**image(8, 8, 8, len(FRAMES)))
    set_encapsulated(ds, value)
    ds.ExtendedOffsetTable = struct.pack("<5Q", 0, 1, 2, 3, 4)  # not item starts
    ds.ExtendedOffsetTableLengths = lengths
    path = write(tmp_path, ds, JPEGBaseline8Bit)
    layout = parse(path).pixel
    assert layout is not None
    assert frames_from_layout(path, layout) == [
        frame + b"\0" * (len(frame) % 2) for frame in FRAMES
    ]


def test_empty_basic_offset_table_one_fragment_per_frame(tmp_path: Path) -> None:
    value = encapsulate(FRAMES, has_bot=False)
    path = _encapsulated_file(tmp_path, FRAMES, value, RLELossless)
    padded = [frame + b"\0" * (len(frame) % 2) for frame in FRAMES]
    layout = _check_frames(path, padded)
    assert all(len(fragments) == 1 for fragments in layout.fragments)


def test_basic_offset_table_with_several_fragments_per_frame(tmp_path: Path) -> None:
    frames = [jpeg_frame(seed, 300) for seed in range(4)]
    value = encapsulate(frames, fragments_per_frame=3, has_bot=True)
    layout = _check_frames(_encapsulated_file(tmp_path, frames, value), frames)
    assert [len(fragments) for fragments in layout.fragments] == [3, 3, 3, 3]


def test_frames_split_on_codestream_start_markers(tmp_path: Path) -> None:
    frames = [jpeg_frame(seed, 302) for seed in range(3)]  # 2 fragments of 154 bytes
    value = encapsulate(frames, fragments_per_frame=2, has_bot=False)
    layout = _check_frames(_encapsulated_file(tmp_path, frames, value), frames)
    assert [len(fragments) for fragments in layout.fragments] == [2, 2, 2]


def test_basic_offset_table_with_wrong_count_is_ignored(tmp_path: Path) -> None:
    fragments = [item(frame + b"\0" * (len(frame) % 2)) for frame in FRAMES]
    value = item(struct.pack("<2L", 0, len(fragments[0]))) + b"".join(fragments)
    path = _encapsulated_file(tmp_path, FRAMES, value)
    layout = parse(path).pixel
    assert layout is not None
    assert [len(fragments) for fragments in layout.fragments] == [1] * 5


def test_fewer_fragments_than_frames(tmp_path: Path) -> None:
    value = encapsulate(FRAMES[:2], has_bot=False)
    ds = new_dataset(**image(8, 8, 8, 3))
    set_encapsulated(ds, value)
    raises(write(tmp_path, ds, JPEGBaseline8Bit), A900, "cannot hold 3 frames")


def test_start_markers_disagree_with_number_of_frames(tmp_path: Path) -> None:
    frames = [jpeg_frame(seed, 301) for seed in range(3)]
    value = encapsulate(frames, fragments_per_frame=2, has_bot=False)
    ds = new_dataset(**image(8, 8, 8, 2))
    set_encapsulated(ds, value)
    raises(write(tmp_path, ds, JPEGBaseline8Bit), A900, "found 3 codestream start(s)")


def test_broken_item_structure(tmp_path: Path) -> None:
    value = item(b"") + item(FRAMES[0] + b"\0") + item(b"\0" * 8, tag=0x00080008)
    raises(_encapsulated_file(tmp_path, FRAMES[:1], value), C000, "unexpected tag 00080008")


def test_video_is_one_stream(tmp_path: Path) -> None:
    chunks = [bytes([n]) * 100 for n in range(7)]
    ds = new_dataset(**image(8, 8, 8, 30))
    set_encapsulated(ds, encapsulate(chunks, has_bot=False))
    layout = parse(write(tmp_path, ds, MPEG4HP41)).pixel
    assert layout is not None
    assert layout.number_of_frames == 1
    assert len(layout.frame_ranges(0)) == 7
    assert parse(tmp_path / "x.dcm").metadata["00280008"]["Value"] == [30]


def test_encapsulated_pixel_data_in_native_syntax(tmp_path: Path) -> None:
    path = _encapsulated_file(tmp_path, FRAMES, encapsulate(FRAMES), RLELossless)
    patch(path, RLELossless.encode(), ExplicitVRLittleEndian.encode())
    raises(path, C000, "encapsulated Pixel Data in native transfer syntax")


def test_native_pixel_data_in_encapsulated_syntax(tmp_path: Path) -> None:
    ds = new_dataset(**image(8, 8, 8, 1))
    ds.PixelData = b"\0" * 64
    path = write(tmp_path, ds)
    patch(path, ExplicitVRLittleEndian.encode(), RLELossless.encode())
    raises(path, C000, "native Pixel Data in encapsulated transfer syntax")


def test_layout_json_round_trip_and_validation() -> None:
    layout = PixelLayout(
        tag=0x7FE00010,
        encapsulated=True,
        number_of_frames=2,
        value_offset=1000,
        value_length=400,
        frame_length=0,
        fragments=(((1016, 100), (1124, 50)), ((1182, 200),)),
    )
    stored = orjson.loads(orjson.dumps(layout.to_json()))
    assert PixelLayout.from_json(stored) == layout
    assert layout.frame_ranges(1) == ((1182, 200),)
    for index in (-1, 2):
        with pytest.raises(IndexError):
            layout.frame_ranges(index)
    for broken in (
        {**stored, "tag": "7FE00010"},
        {**stored, "encapsulated": 1},
        {**stored, "frames": True},
        {**stored, "fragments": [[1016, 100, 1124]]},
        {**stored, "fragments": None},
        {key: value for key, value in stored.items() if key != "offset"},
    ):
        with pytest.raises(ValueError):
            PixelLayout.from_json(broken)
    native = PixelLayout(0x7FE00010, False, 3, 500, 300, 100, ())
    assert native.frame_ranges(2) == ((700, 100),)
    assert PixelLayout.from_json(native.to_json()) == native


# --- refused input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"DICM", b"\0" * 128, b"\0" * 128 + b"DICM", b"\0" * 128 + b"DICM" + b"\xff" * 300],
    ids=["empty", "prefix-only", "preamble-only", "no-meta", "garbage-meta"],
)
def test_not_dicom(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(content)
    with pytest.raises(InvalidInstance) as caught:
        parse(path)
    assert caught.value.failure_reason == C000


def test_random_bytes(tmp_path: Path) -> None:
    rng = random.Random(1)
    path = tmp_path / "x.dcm"
    for _ in range(50):
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))))
        with pytest.raises(InvalidInstance):
            parse(path)


def _bundled(name: str) -> Path:
    return next(path for path in BUNDLED if path.name == name)


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "MR_small_implicit.dcm"])
def test_truncation_is_refused(tmp_path: Path, name: str) -> None:
    data = _bundled(name).read_bytes()
    layout = parse(_bundled(name)).pixel
    assert layout is not None
    path = tmp_path / name
    for cut in range(0, len(data) - 1, 97):
        path.write_bytes(data[:cut])
        try:
            parse(path)
        except InvalidInstance as exc:
            assert exc.failure_reason in (C000, A900)
        else:  # only a cut exactly at an element boundary before the Pixel Data parses
            assert cut < layout.value_offset
        if cut > layout.value_offset:
            raises(path, C000, "")


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "MR_small_implicit.dcm"])
def test_corrupted_bytes_only_raise_invalid_instance(tmp_path: Path, name: str) -> None:
    data = _bundled(name).read_bytes()
    rng = random.Random(name)
    path = tmp_path / name
    for _ in range(300):
        corrupt = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            corrupt[rng.randrange(132, min(len(data), 3000))] = rng.randrange(256)
        path.write_bytes(bytes(corrupt))
        with contextlib.suppress(InvalidInstance):  # anything else fails the test
            parse(path)


@pytest.mark.parametrize(
    ("keyword", "name"),
    [
        ("SOPClassUID", "SOP Class UID (0008,0016)"),
        ("SOPInstanceUID", "SOP Instance UID (0008,0018)"),
        ("StudyInstanceUID", "Study Instance UID (0020,000D)"),
        ("SeriesInstanceUID", "Series Instance UID (0020,000E)"),
    ],
)
def test_missing_uid(tmp_path: Path, keyword: str, name: str) -> None:
    ds = new_dataset()
    path = write(tmp_path, ds)
    ds = pydicom.dcmread(path)
    if keyword == "SOPInstanceUID":
        del ds.file_meta.MediaStorageSOPInstanceUID
    delattr(ds, keyword)
    ds.save_as(path)
    raises(path, A900, f"missing or empty {name}")
    setattr(ds, keyword, "")
    ds.save_as(path)
    raises(path, A900, f"missing or empty {name}")


@pytest.mark.parametrize("uid", ["1.02.3", "1.2.3.", "abc", "1." + "2" * 64, "1.2\\3.4", "1..2"])
@pytest.mark.parametrize("keyword", ["SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_invalid_uid(tmp_path: Path, keyword: str, uid: str) -> None:
    ds = new_dataset()
    setattr(ds, keyword, uid)
    raises(write(tmp_path, ds), A900, "invalid")


def test_invalid_sop_instance_uid(tmp_path: Path) -> None:
    ds = new_dataset()
    ds.SOPInstanceUID = "1.2.03"
    path = write(tmp_path, ds)
    raises(path, A900, "invalid SOP Instance UID (0008,0018)")


def test_media_storage_sop_instance_uid_mismatch_is_tolerated(tmp_path: Path) -> None:
    path = write(tmp_path, new_dataset())
    ds = pydicom.dcmread(path)
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4")
    ds.save_as(path)
    assert parse(path).sop_instance_uid == ds.SOPInstanceUID


def test_media_storage_sop_instance_uid_is_optional(tmp_path: Path) -> None:
    path = write(tmp_path, new_dataset())
    ds = pydicom.dcmread(path)
    del ds.file_meta.MediaStorageSOPInstanceUID
    ds.save_as(path)
    assert parse(path).sop_instance_uid == ds.SOPInstanceUID


def test_invalid_transfer_syntax_uid(tmp_path: Path) -> None:
    path = write(tmp_path, new_dataset())
    patch(path, b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.x\0")
    raises(path, C000, "invalid Transfer Syntax UID")


def test_unknown_but_valid_transfer_syntax_is_read_as_explicit_little_endian(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, new_dataset())
    patch(path, b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.9\0")
    assert parse(path).transfer_syntax_uid == "1.2.840.10008.1.2.9"


def test_deflated(tmp_path: Path) -> None:
    parsed = parse(_bundled("image_dfl.dcm"))
    assert parsed.deflated
    assert parsed.bulk == ()
    assert parsed.pixel is None
    assert parsed.metadata["7FE00010"]["BulkDataURI"].endswith("/bulk/7FE00010")


def test_trailing_elements_after_pixel_data_are_kept(tmp_path: Path) -> None:
    ds = new_dataset(**image(2, 2, 8, 1))
    ds.PixelData = b"\x01\x02\x03\x04"
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 2000)  # Data Set Trailing Padding
    parsed = parse(write(tmp_path, ds))
    assert parsed.metadata["FFFCFFFC"]["vr"] == "OB"
    assert {bulk.path for bulk in parsed.bulk} == {"7FE00010", "FFFCFFFC"}


def test_implicit_little_endian_pixel_data_is_ow(tmp_path: Path) -> None:
    ds = new_dataset(**image(300, 300, 8, 2))
    ds.PixelData = bytes(180_000)  # deferred: the VR comes from the ambiguity rules
    parsed = parse(write(tmp_path, ds, ImplicitVRLittleEndian))
    assert parsed.metadata["7FE00010"] == {
        "vr": "OW",
        "BulkDataURI": uri(
            parsed.study_instance_uid,
            parsed.series_instance_uid,
            parsed.sop_instance_uid,
            "7FE00010",
        ),
    }
    assert parsed.pixel is not None and parsed.pixel.frame_length == 90_000


def test_dicom_package_needs_no_web_or_database_framework() -> None:
    code = (
        "import sys\n"
        "import dicomweb_server.dicom.parse, dicomweb_server.dicom.json_model\n"
        "import dicomweb_server.dicom.pixel_layout, dicomweb_server.dicom.uids\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('fastapi', 'sqlalchemy', "
        "'starlette')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
