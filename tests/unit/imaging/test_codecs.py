"""Frame codecs: decoding, native conversion and lossless transcoding of single frames.

Every bundled pydicom test file with Pixel Data is checked against pydicom's own decoding of
the whole instance, frame by frame; synthetic images cover the combinations the bundled files
lack (signed data with unused bits, colour-by-plane, 16-bit containers with 8-bit samples,
1-bit frames that are not byte-aligned).
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from dicomweb_server.imaging.codecs import (
    JPEG_2000_LOSSLESS,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
    FrameCodecError,
    can_transcode_frame,
    decode_frame,
    encode_frame,
    extract_unaligned_frame,
    frame_media_type,
    frame_transcode_problem,
    native_attributes,
    native_frame,
    transcode_frame,
    transcoded_attributes,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
ENCODED_TARGETS = [RLE_LOSSLESS, JPEG_LS_LOSSLESS, JPEG_2000_LOSSLESS]
MAX_FRAMES = 3


def _pixel_files() -> list[str]:
    """Bundled test files that hold Pixel Data (decodability is checked per test)."""
    names = []
    for path in sorted(get_testdata_files()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = pydicom.dcmread(path, stop_before_pixels=False)
        except Exception:
            continue  # not a DICOM file (pydicom also bundles other formats)
        if "PixelData" in dataset:
            names.append(path)
    return names


PIXEL_FILES = _pixel_files()


def test_enough_bundled_files_have_pixel_data() -> None:
    assert len(PIXEL_FILES) >= 80


@dataclass
class Case:
    """A bundled file, its stored frames and what pydicom makes of them."""

    attrs: Dataset
    syntax: str
    frames: list[bytes]
    expected: list[NDArray[Any]]
    pixel_vr: str
    decompressed: list[bytes] | None  # frames of Pixel Data after ds.decompress()


def _frame_bits(dataset: Dataset) -> int:
    bits = (
        int(dataset.Rows)
        * int(dataset.Columns)
        * int(dataset.get("SamplesPerPixel") or 1)
        * int(dataset.BitsAllocated)
    )
    if dataset.PhotometricInterpretation == "YBR_FULL_422":
        bits = bits // 3 * 2  # native YBR_FULL_422 is subsampled
    return bits


def _native_stored_frames(dataset: Dataset, syntax: str, count: int) -> list[bytes]:
    """Slice native frames out of the value independently of the code under test."""
    value = bytes(dataset.PixelData)
    bits = _frame_bits(dataset)
    frames = []
    for index in range(count):
        if bits % 8:
            unpacked = np.unpackbits(np.frombuffer(value, np.uint8), bitorder="little")
            part = unpacked[index * bits : (index + 1) * bits]
            frames.append(np.packbits(part, bitorder="little").tobytes())
            continue
        size = bits // 8
        start, end = index * size, (index + 1) * size
        if syntax == BIG_ENDIAN and dataset["PixelData"].VR == "OW" and dataset.BitsAllocated == 8:
            # 8-bit OW big-endian data is byte-swapped in pairs: take whole words.
            start -= start % 2
            end += end % 2
        frames.append(value[start:end])
    return frames


@functools.cache
def _case(path: str) -> Case:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path)
        try:
            whole = dataset.pixel_array
        except Exception as exc:
            pytest.skip(f"pydicom itself cannot decode this file: {type(exc).__name__}: {exc}")
        syntax = str(dataset.file_meta.TransferSyntaxUID)
        count = int(dataset.get("NumberOfFrames") or 1)
        taken = min(count, MAX_FRAMES)
        expected = [whole[index] if count > 1 else whole for index in range(taken)]
        decompressed = None
        if UID(syntax).is_compressed:
            frames = list(generate_frames(dataset.PixelData, number_of_frames=count))[:taken]
            copied = copy.deepcopy(dataset)
            copied.decompress(generate_instance_uid=False)
            size = math.ceil(_frame_bits(copied) / 8)
            value = bytes(copied.PixelData)
            decompressed = [value[i * size : (i + 1) * size] for i in range(taken)]
        else:
            frames = _native_stored_frames(dataset, syntax, taken)
    attrs = copy.deepcopy(dataset)
    pixel_vr = str(dataset["PixelData"].VR)
    del attrs.PixelData
    del attrs.file_meta  # the codecs must not need it
    return Case(attrs, syntax, frames, expected, pixel_vr, decompressed)


def _pydicom_decode(attrs: Dataset, codestream: bytes, syntax: str) -> NDArray[Any]:
    """pydicom's own decoding of one frame wrapped as a single-frame data set."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = UID(syntax)
    for element in attrs:
        dataset.add(copy.deepcopy(element))
    dataset.NumberOfFrames = 1
    if UID(syntax).is_encapsulated:
        dataset.PixelData = encapsulate([codestream])
    else:
        dataset.PixelData = codestream + b"\0" * (len(codestream) % 2)
    dataset["PixelData"].VR = "OB"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pixel_array(dataset, index=0)


def _ids(paths: list[str]) -> list[str]:
    return [Path(path).name for path in paths]


@pytest.mark.parametrize("path", PIXEL_FILES, ids=_ids(PIXEL_FILES))
def test_decode_frame_matches_pydicom_pixel_array(path: str) -> None:
    case = _case(path)
    for frame, expected in zip(case.frames, case.expected, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = decode_frame(case.attrs, frame, case.syntax, pixel_vr=case.pixel_vr)
        assert array.dtype == expected.dtype
        assert array.shape == expected.shape
        np.testing.assert_array_equal(array, expected)


@pytest.mark.parametrize("path", PIXEL_FILES, ids=_ids(PIXEL_FILES))
def test_native_frame_matches_decompressed_pixel_data(path: str) -> None:
    case = _case(path)
    as_native = native_attributes(case.attrs, case.syntax)
    for index, frame in enumerate(case.frames):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            native = native_frame(case.attrs, frame, case.syntax, pixel_vr=case.pixel_vr)
        if case.decompressed is not None:
            assert native == case.decompressed[index]
        elif case.syntax != BIG_ENDIAN:
            assert native == frame  # native little endian: unchanged
        # Whatever the source, pydicom reads the result as Explicit VR Little Endian data
        # described by native_attributes() and finds the stored frame's pixels.
        np.testing.assert_array_equal(
            _pydicom_decode(as_native, native, EXPLICIT_LE), case.expected[index]
        )


@pytest.mark.parametrize("target", ENCODED_TARGETS)
@pytest.mark.parametrize("path", PIXEL_FILES, ids=_ids(PIXEL_FILES))
def test_transcode_frame_round_trips_through_pydicom(path: str, target: str) -> None:
    case = _case(path)
    frame = case.frames[0]
    problem = frame_transcode_problem(case.attrs, case.syntax, target)
    if problem is not None:
        assert not can_transcode_frame(case.attrs, case.syntax, target)
        with pytest.raises(FrameCodecError, match=r"\w"):
            transcode_frame(case.attrs, frame, case.syntax, target, pixel_vr=case.pixel_vr)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded = transcode_frame(case.attrs, frame, case.syntax, target, pixel_vr=case.pixel_vr)
    if target == case.syntax:
        assert encoded is frame  # as stored
    else:
        assert encoded != frame
    delivered = transcoded_attributes(case.attrs, case.syntax, target)
    np.testing.assert_array_equal(_pydicom_decode(delivered, encoded, target), case.expected[0])
    np.testing.assert_array_equal(decode_frame(delivered, encoded, target), case.expected[0])


@pytest.mark.parametrize("path", PIXEL_FILES, ids=_ids(PIXEL_FILES))
def test_transcode_frame_to_explicit_le_is_native_frame(path: str) -> None:
    case = _case(path)
    frame = case.frames[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert can_transcode_frame(case.attrs, case.syntax, EXPLICIT_LE)
        delivered = transcode_frame(
            case.attrs, frame, case.syntax, EXPLICIT_LE, pixel_vr=case.pixel_vr
        )
        assert delivered == native_frame(case.attrs, frame, case.syntax, pixel_vr=case.pixel_vr)
    assert transcode_frame(case.attrs, frame, case.syntax, case.syntax) is frame


def test_every_encoder_target_is_exercised_by_bundled_files() -> None:
    """The bundled files must reach every encoder with mono, colour, signed and multi-frame data."""
    reached: dict[str, set[str]] = {target: set() for target in ENCODED_TARGETS}
    for path in PIXEL_FILES:
        try:
            case = _case(path)
        except pytest.skip.Exception:
            continue
        attrs = case.attrs
        kinds = {
            "colour" if int(attrs.get("SamplesPerPixel") or 1) == 3 else "mono",
            "signed" if int(attrs.get("PixelRepresentation") or 0) else "unsigned",
            f"{attrs.BitsAllocated}-bit",
        }
        if int(attrs.get("NumberOfFrames") or 1) > 1:
            kinds.add("multi-frame")
        for target in ENCODED_TARGETS:
            if can_transcode_frame(attrs, case.syntax, target):
                reached[target] |= kinds
    for target, kinds in reached.items():
        assert {"colour", "mono", "signed", "8-bit", "16-bit", "multi-frame"} <= kinds, target


# --- synthetic images ------------------------------------------------------------------


@dataclass(frozen=True)
class Synthetic:
    bits_allocated: int
    bits_stored: int
    signed: int
    samples: int
    planar: int = 0
    frames: int = 1
    rows: int = 40
    columns: int = 36


SYNTHETIC = [
    Synthetic(8, 8, 0, 1),
    Synthetic(8, 6, 1, 1),
    Synthetic(16, 8, 0, 1),
    Synthetic(16, 12, 0, 1, frames=3),
    Synthetic(16, 12, 1, 1),
    Synthetic(16, 16, 1, 1, frames=2),
    Synthetic(16, 16, 0, 1),
    Synthetic(8, 8, 0, 3),
    Synthetic(8, 8, 0, 3, planar=1, frames=2),
    Synthetic(16, 16, 0, 3, planar=1),
    Synthetic(32, 24, 0, 1),
    Synthetic(32, 20, 1, 1),
]


def _synthetic_dataset(spec: Synthetic, seed: int = 7) -> Dataset:
    """A native Explicit VR Little Endian image with junk in the unused high bits."""
    rng = np.random.default_rng(seed)
    shape: tuple[int, ...] = (spec.frames, spec.rows, spec.columns, spec.samples)
    # Smooth ramps plus noise: realistic enough for every codec, never constant.
    ramp = np.add.outer(np.arange(spec.rows), np.arange(spec.columns))[None, :, :, None]
    top = 2**spec.bits_stored
    values = (ramp * 37 + rng.integers(0, 64, size=shape)) % top
    if spec.signed:
        values = values - top // 2
    container = np.dtype(f"<u{spec.bits_allocated // 8}")
    raw = values.astype(np.int64) & (top - 1)
    if spec.bits_stored < spec.bits_allocated:
        junk = rng.integers(0, 2 ** (spec.bits_allocated - spec.bits_stored), size=shape)
        raw = raw | (junk << spec.bits_stored)
    stored = raw.astype(container)
    if spec.planar:
        stored = stored.transpose(0, 3, 1, 2)  # colour-by-plane
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)
    dataset.Rows = spec.rows
    dataset.Columns = spec.columns
    dataset.SamplesPerPixel = spec.samples
    dataset.PhotometricInterpretation = "RGB" if spec.samples == 3 else "MONOCHROME2"
    if spec.samples == 3:
        dataset.PlanarConfiguration = spec.planar
    dataset.BitsAllocated = spec.bits_allocated
    dataset.BitsStored = spec.bits_stored
    dataset.HighBit = spec.bits_stored - 1
    dataset.PixelRepresentation = spec.signed
    dataset.NumberOfFrames = spec.frames
    dataset.PixelData = stored.tobytes()
    dataset["PixelData"].VR = "OW" if spec.bits_allocated > 8 else "OB"
    return dataset


def _synthetic_id(spec: Synthetic) -> str:
    sign = "s" if spec.signed else "u"
    return (
        f"{spec.bits_allocated}a{spec.bits_stored}{sign}x{spec.samples}"
        f"pc{spec.planar}f{spec.frames}"
    )


@pytest.mark.parametrize("target", ENCODED_TARGETS)
@pytest.mark.parametrize("spec", SYNTHETIC, ids=[_synthetic_id(s) for s in SYNTHETIC])
def test_synthetic_images_round_trip(spec: Synthetic, target: str) -> None:
    dataset = _synthetic_dataset(spec)
    attrs = copy.deepcopy(dataset)
    del attrs.PixelData
    size = spec.rows * spec.columns * spec.samples * spec.bits_allocated // 8
    if target == RLE_LOSSLESS and spec.bits_allocated == 32:
        assert not can_transcode_frame(attrs, EXPLICIT_LE, target)  # PS3.5 Table 8.2.2-1
        return
    if target == JPEG_LS_LOSSLESS and (
        spec.bits_allocated == 32 or (spec.signed and spec.samples == 3)
    ):
        assert not can_transcode_frame(attrs, EXPLICIT_LE, target)
        return
    assert can_transcode_frame(attrs, EXPLICIT_LE, target), frame_transcode_problem(
        attrs, EXPLICIT_LE, target
    )
    delivered = transcoded_attributes(attrs, EXPLICIT_LE, target)
    assert delivered.get("PlanarConfiguration", 0) == 0
    for index in range(spec.frames):
        frame = dataset.PixelData[index * size : (index + 1) * size]
        expected = pixel_array(dataset, index=index)
        encoded = transcode_frame(attrs, frame, EXPLICIT_LE, target)
        np.testing.assert_array_equal(_pydicom_decode(delivered, encoded, target), expected)
        # encode_frame with the stored attributes and the source gives the same codestream
        assert encode_frame(attrs, frame, target, source=EXPLICIT_LE) == encoded


def test_big_endian_16_bit_frames_are_swapped_word_by_word() -> None:
    dataset = _synthetic_dataset(Synthetic(16, 12, 1, 1, frames=2))
    attrs = copy.deepcopy(dataset)
    del attrs.PixelData
    little = bytes(dataset.PixelData)
    big = np.frombuffer(little, "<u2").astype(">u2").tobytes()
    size = len(little) // 2
    for index in range(2):
        frame = big[index * size : (index + 1) * size]
        native = native_frame(attrs, frame, BIG_ENDIAN)
        assert native == little[index * size : (index + 1) * size]  # junk bits kept as stored
        np.testing.assert_array_equal(
            decode_frame(attrs, frame, BIG_ENDIAN), pixel_array(dataset, index=index)
        )


def test_big_endian_8_bit_ow_needs_whole_words() -> None:
    path = get_testdata_file("SC_rgb_small_odd_big_endian.dcm")
    assert path is not None
    dataset = pydicom.dcmread(path)
    attrs = copy.deepcopy(dataset)
    del attrs.PixelData
    value = bytes(dataset.PixelData)  # 27 bytes of samples + 1 pad byte, swapped in pairs
    assert dataset["PixelData"].VR == "OW" and len(value) == 28
    native = native_frame(attrs, value, BIG_ENDIAN, pixel_vr="OW")
    assert len(native) == 27
    np.testing.assert_array_equal(
        np.frombuffer(native, np.uint8).reshape(3, 3, 3), dataset.pixel_array
    )
    with pytest.raises(FrameCodecError, match="whole 16-bit words"):
        native_frame(attrs, value[:27], BIG_ENDIAN, pixel_vr="OW")


# --- can_transcode_frame --------------------------------------------------------------


def _attrs(**changes: Any) -> Dataset:
    attrs = Dataset()
    attrs.Rows = 64
    attrs.Columns = 64
    attrs.SamplesPerPixel = 1
    attrs.PhotometricInterpretation = "MONOCHROME2"
    attrs.BitsAllocated = 16
    attrs.BitsStored = 12
    attrs.HighBit = 11
    attrs.PixelRepresentation = 0
    for keyword, value in changes.items():
        if value is None:
            delattr(attrs, keyword)
        else:
            setattr(attrs, keyword, value)
    return attrs


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (EXPLICIT_LE, RLE_LOSSLESS),
        (EXPLICIT_LE, JPEG_LS_LOSSLESS),
        (EXPLICIT_LE, JPEG_2000_LOSSLESS),
        ("1.2.840.10008.1.2", JPEG_2000_LOSSLESS),
        (BIG_ENDIAN, RLE_LOSSLESS),
        ("1.2.840.10008.1.2.1.99", JPEG_LS_LOSSLESS),
        ("1.2.840.10008.1.2.4.50", EXPLICIT_LE),
        ("1.2.840.10008.1.2.4.91", RLE_LOSSLESS),
        ("1.2.840.10008.1.2.4.201", JPEG_2000_LOSSLESS),
        (JPEG_2000_LOSSLESS, JPEG_LS_LOSSLESS),
        ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.50"),  # as stored, lossy or not
        ("1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.102"),
    ],
)
def test_can_transcode_frame_accepts(source: str, target: str) -> None:
    assert can_transcode_frame(_attrs(), source, target)
    assert frame_transcode_problem(_attrs(), source, target) is None


@pytest.mark.parametrize(
    ("attrs", "source", "target", "reason"),
    [
        (_attrs(), EXPLICIT_LE, "1.2.840.10008.1.2.4.50", "never into a lossy one"),
        (_attrs(), EXPLICIT_LE, "1.2.840.10008.1.2.4.51", "never into a lossy one"),
        (_attrs(), EXPLICIT_LE, "1.2.840.10008.1.2.4.81", "never into a lossy one"),
        (_attrs(), EXPLICIT_LE, "1.2.840.10008.1.2.4.91", "never into a lossy one"),
        (_attrs(), EXPLICIT_LE, "1.2.840.10008.1.2.4.203", "never into a lossy one"),
        (_attrs(), EXPLICIT_LE, "1.2.840.10008.1.2.4.201", "no installed codec can encode"),
        (_attrs(), EXPLICIT_LE, "1.2.840.10008.1.2.4.202", "no installed codec can encode"),
        (_attrs(), EXPLICIT_LE, "1.2.840.10008.1.2.4.70", "no installed codec can encode"),
        (_attrs(), EXPLICIT_LE, "1.2.840.10008.1.2", "not offered"),
        (_attrs(), EXPLICIT_LE, "1.2.3.4", "not offered"),
        (_attrs(), "1.2.840.10008.1.2.4.102", EXPLICIT_LE, "no decoder"),
        (_attrs(), "1.2.840.10008.1.2.4.100", RLE_LOSSLESS, "no decoder"),
        (_attrs(BitsAllocated=32, BitsStored=32), EXPLICIT_LE, RLE_LOSSLESS, "cannot hold"),
        (_attrs(BitsAllocated=32, BitsStored=32), EXPLICIT_LE, JPEG_LS_LOSSLESS, "cannot hold"),
        (_attrs(BitsAllocated=32, BitsStored=32), EXPLICIT_LE, JPEG_2000_LOSSLESS, "at most 24"),
        (_attrs(BitsAllocated=1, BitsStored=1), EXPLICIT_LE, RLE_LOSSLESS, "cannot hold"),
        (_attrs(BitsAllocated=1, BitsStored=1), EXPLICIT_LE, JPEG_2000_LOSSLESS, "cannot hold"),
        (_attrs(BitsStored=1), EXPLICIT_LE, JPEG_LS_LOSSLESS, "cannot hold"),
        (
            _attrs(SamplesPerPixel=3, PhotometricInterpretation="RGB", PixelRepresentation=1),
            EXPLICIT_LE,
            RLE_LOSSLESS,
            "cannot hold",
        ),
        (
            _attrs(SamplesPerPixel=3, PhotometricInterpretation="YBR_FULL", BitsStored=16),
            EXPLICIT_LE,
            JPEG_LS_LOSSLESS,
            "cannot hold",
        ),
        (
            _attrs(SamplesPerPixel=3, PhotometricInterpretation="YBR_FULL_422", BitsAllocated=8),
            EXPLICIT_LE,
            RLE_LOSSLESS,
            "subsampled",
        ),
        (_attrs(Rows=16, Columns=512), EXPLICIT_LE, JPEG_2000_LOSSLESS, "at least 32x32"),
        (_attrs(Rows=8, Columns=8), EXPLICIT_LE, JPEG_LS_LOSSLESS, "too small"),
        (_attrs(Rows=None), EXPLICIT_LE, RLE_LOSSLESS, "missing or invalid"),
        (_attrs(BitsAllocated=12), BIG_ENDIAN, EXPLICIT_LE, "Bits Allocated 12"),
    ],
)
def test_can_transcode_frame_refuses(attrs: Dataset, source: str, target: str, reason: str) -> None:
    assert not can_transcode_frame(attrs, source, target)
    problem = frame_transcode_problem(attrs, source, target)
    assert problem is not None and reason in problem
    with pytest.raises(FrameCodecError, match=reason):
        transcode_frame(attrs, b"\0" * 64, source, target)


def test_decoded_ybr_is_judged_as_rgb() -> None:
    """JPEG YBR_FULL_422 decodes to RGB, which RLE can hold at 8 bits (PS3.5 Table 8.2.2-1)."""
    attrs = _attrs(
        SamplesPerPixel=3, PhotometricInterpretation="YBR_FULL_422", BitsAllocated=8, BitsStored=8
    )
    attrs.PlanarConfiguration = 0
    assert not can_transcode_frame(attrs, EXPLICIT_LE, RLE_LOSSLESS)  # native: subsampled
    assert can_transcode_frame(attrs, "1.2.840.10008.1.2.4.50", RLE_LOSSLESS)
    delivered = transcoded_attributes(attrs, "1.2.840.10008.1.2.4.50", RLE_LOSSLESS)
    assert delivered.PhotometricInterpretation == "RGB"
    assert attrs.PhotometricInterpretation == "YBR_FULL_422"  # input left alone


def test_transcoded_attributes_keep_native_layout_for_octet_stream() -> None:
    attrs = _attrs(SamplesPerPixel=3, PhotometricInterpretation="RGB", BitsAllocated=8)
    attrs.PlanarConfiguration = 1
    assert transcoded_attributes(attrs, EXPLICIT_LE, EXPLICIT_LE).PlanarConfiguration == 1
    assert transcoded_attributes(attrs, BIG_ENDIAN, EXPLICIT_LE).PlanarConfiguration == 1
    assert transcoded_attributes(attrs, EXPLICIT_LE, RLE_LOSSLESS).PlanarConfiguration == 0
    assert transcoded_attributes(attrs, RLE_LOSSLESS, EXPLICIT_LE).PlanarConfiguration == 0
    assert transcoded_attributes(attrs, RLE_LOSSLESS, RLE_LOSSLESS).PlanarConfiguration == 1
    assert attrs.PlanarConfiguration == 1


# --- errors ---------------------------------------------------------------------------


def test_corrupt_codestream_is_a_frame_codec_error() -> None:
    attrs = _attrs()
    with pytest.raises(FrameCodecError, match="cannot decode"):
        decode_frame(attrs, b"\xff\xd8\xff\xc3 not a JPEG-LS stream", JPEG_LS_LOSSLESS)


def test_short_native_frame_is_a_frame_codec_error() -> None:
    with pytest.raises(FrameCodecError, match="holds 100 bytes"):
        decode_frame(_attrs(), b"\0" * 100, EXPLICIT_LE)


def test_missing_attributes_are_a_frame_codec_error() -> None:
    with pytest.raises(FrameCodecError, match="missing or invalid"):
        decode_frame(_attrs(PhotometricInterpretation=None), b"\0" * 8192, EXPLICIT_LE)


def test_undecodable_source_is_a_frame_codec_error() -> None:
    with pytest.raises(FrameCodecError, match="no decoder"):
        decode_frame(_attrs(), b"\0" * 100, "1.2.840.10008.1.2.4.102")


def test_frame_media_types() -> None:
    assert frame_media_type(EXPLICIT_LE) == "application/octet-stream"
    assert frame_media_type(BIG_ENDIAN) == "application/octet-stream"
    assert frame_media_type(RLE_LOSSLESS) == "image/dicom-rle"
    assert frame_media_type(JPEG_LS_LOSSLESS) == "image/jls"
    assert frame_media_type(JPEG_2000_LOSSLESS) == "image/jp2"
    assert frame_media_type("1.2.840.10008.1.2.4.201") == "image/jphc"


# --- extract_unaligned_frame ----------------------------------------------------------


def _one_bit_dataset(rows: int, columns: int, frames: int) -> tuple[Dataset, NDArray[Any]]:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 2, size=(frames, rows, columns), dtype=np.uint8)
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)
    dataset.Rows = rows
    dataset.Columns = columns
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 1
    dataset.BitsStored = 1
    dataset.HighBit = 0
    dataset.PixelRepresentation = 0
    dataset.NumberOfFrames = frames
    # Frames follow each other bit after bit, first pixel in the least significant bit.
    dataset.PixelData = np.packbits(pixels.ravel(), bitorder="little").tobytes()
    dataset["PixelData"].VR = "OB"
    return dataset, pixels


def test_extract_unaligned_frame_matches_pydicom() -> None:
    dataset, pixels = _one_bit_dataset(3, 5, 3)  # 15 bits per frame
    value = bytes(dataset.PixelData)
    assert len(value) == 6
    for index in range(3):
        frame = extract_unaligned_frame(value, dataset, index)
        assert len(frame) == 2
        assert frame[1] >> 7 == 0  # the 16th bit is padding
        # pydicom 3.0.2's pixel_array(ds, index=i) cannot cut these frames out itself (it
        # reads too few bytes for i > 0), so compare with frame i of the whole array.
        expected = dataset.pixel_array[index]
        np.testing.assert_array_equal(expected, pixels[index])
        np.testing.assert_array_equal(decode_frame(dataset, frame, EXPLICIT_LE), expected)
        assert native_frame(dataset, frame, EXPLICIT_LE) == frame


def test_extract_unaligned_frame_of_aligned_frames_is_a_slice() -> None:
    dataset, pixels = _one_bit_dataset(4, 4, 3)  # 16 bits per frame
    value = bytes(dataset.PixelData)
    for index in range(3):
        frame = extract_unaligned_frame(value, dataset, index)
        assert frame == value[2 * index : 2 * index + 2]
        np.testing.assert_array_equal(decode_frame(dataset, frame, EXPLICIT_LE), pixels[index])


def test_extract_unaligned_frame_rejects_bad_requests() -> None:
    dataset, _ = _one_bit_dataset(3, 5, 3)
    value = bytes(dataset.PixelData)
    with pytest.raises(FrameCodecError, match="too few"):
        extract_unaligned_frame(value[:5], dataset, 2)
    with pytest.raises(FrameCodecError, match="index -1"):
        extract_unaligned_frame(value, dataset, -1)
