"""Whole-instance (Part 10) transcoding for WADO-RS ``application/dicom`` retrieval."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames, parse_basic_offsets
from pydicom.filebase import DicomBytesIO

from dicomweb_server.imaging.codecs import JPEG_2000_LOSSLESS, JPEG_LS_LOSSLESS, RLE_LOSSLESS
from dicomweb_server.imaging.transcode import TranscodeError, can_transcode, transcode

EXPLICIT_LE = "1.2.840.10008.1.2.1"
LOSSLESS_TARGETS = [EXPLICIT_LE, RLE_LOSSLESS, JPEG_LS_LOSSLESS, JPEG_2000_LOSSLESS]


def _path(name: str) -> Path:
    found = pydicom.data.get_testdata_file(name)
    assert found is not None, name
    return Path(found)


def _read(data: bytes) -> pydicom.FileDataset:
    # No force=True: the result must be a proper Part 10 file with preamble and meta.
    return pydicom.dcmread(io.BytesIO(data))


def _pixels(dataset: Dataset) -> NDArray[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dataset.pixel_array


@pytest.mark.parametrize("target", LOSSLESS_TARGETS)
@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # 16-bit signed, Explicit VR Little Endian
        "MR_small.dcm",
        "MR_small_jp2klossless.dcm",  # JPEG 2000 Lossless source
        "SC_rgb_rle_2frame.dcm",  # RLE, colour, multi-frame
        "MR_small_bigendian.dcm",  # retired Explicit VR Big Endian
        "ExplVR_BigEnd.dcm",  # big endian colour-by-plane
        "image_dfl.dcm",  # deflated
        "SC_rgb_jpeg_dcmtk.dcm",  # lossy JPEG YBR_FULL: decoded to RGB
    ],
)
def test_transcode_round_trips(name: str, target: str) -> None:
    path = _path(name)
    source = pydicom.dcmread(path)
    stored = str(source.file_meta.TransferSyntaxUID)
    attrs = pydicom.dcmread(path, stop_before_pixels=True)
    assert can_transcode(stored, target)
    assert can_transcode(stored, target, attrs)
    result = _read(transcode(path, target))
    assert result.file_meta.TransferSyntaxUID == target
    assert result.SOPInstanceUID == source.SOPInstanceUID  # lossless: same instance
    assert result.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    np.testing.assert_array_equal(_pixels(result), _pixels(source))
    assert result.PatientName == source.PatientName
    if target not in (EXPLICIT_LE, stored):  # the stored file is returned as it is
        frames = int(result.get("NumberOfFrames") or 1)
        value = result.PixelData
        offsets = parse_basic_offsets(DicomBytesIO(value))
        assert len(offsets) == frames  # one offset per frame in the Basic Offset Table
        assert len(list(generate_frames(value, number_of_frames=frames))) == frames


def test_lossy_ybr_source_is_delivered_as_rgb() -> None:
    path = _path("SC_rgb_jpeg_dcmtk.dcm")
    assert pydicom.dcmread(path).PhotometricInterpretation == "YBR_FULL"
    for target in LOSSLESS_TARGETS:
        assert _read(transcode(path, target)).PhotometricInterpretation == "RGB"


def test_big_endian_8_bit_ow_odd_length() -> None:
    path = _path("SC_rgb_small_odd_big_endian.dcm")
    source = pydicom.dcmread(path)
    for target in (EXPLICIT_LE, RLE_LOSSLESS):
        result = _read(transcode(path, target))
        np.testing.assert_array_equal(_pixels(result), _pixels(source))
    attrs = pydicom.dcmread(path, stop_before_pixels=True)
    assert not can_transcode(str(source.file_meta.TransferSyntaxUID), JPEG_2000_LOSSLESS, attrs)


@pytest.mark.parametrize("target", LOSSLESS_TARGETS)
def test_instance_without_pixel_data(target: str) -> None:
    path = _path("test-SR.dcm")
    source = pydicom.dcmread(path)
    assert "PixelData" not in source
    stored = str(source.file_meta.TransferSyntaxUID)
    attrs = pydicom.dcmread(path, stop_before_pixels=True)
    assert can_transcode(stored, target, attrs)
    result = _read(transcode(path, target))
    assert result.file_meta.TransferSyntaxUID == target
    assert "PixelData" not in result
    assert not result.is_implicit_VR and result.is_little_endian
    assert result.to_json_dict() == source.to_json_dict()


def test_instance_without_pixel_data_still_refuses_lossy_targets() -> None:
    path = _path("test-SR.dcm")
    attrs = pydicom.dcmread(path, stop_before_pixels=True)
    assert not can_transcode(EXPLICIT_LE, "1.2.840.10008.1.2.4.50", attrs)
    with pytest.raises(TranscodeError, match="never into a lossy one"):
        transcode(path, "1.2.840.10008.1.2.4.50")


def test_same_syntax_returns_the_stored_bytes() -> None:
    path = _path("MR_small_RLE.dcm")
    assert transcode(path, RLE_LOSSLESS) == path.read_bytes()
    assert transcode(io.BytesIO(path.read_bytes()), RLE_LOSSLESS) == path.read_bytes()


@pytest.mark.parametrize(
    ("name", "target", "reason"),
    [
        ("CT_small.dcm", "1.2.840.10008.1.2.4.50", "never into a lossy one"),
        ("CT_small.dcm", "1.2.840.10008.1.2.4.91", "never into a lossy one"),
        ("CT_small.dcm", "1.2.840.10008.1.2.4.201", "no installed codec can encode"),
        ("rtdose.dcm", RLE_LOSSLESS, "cannot hold this image"),  # 32-bit
        ("rtdose.dcm", JPEG_2000_LOSSLESS, "at most 24 bits"),
        ("liver_1frame.dcm", JPEG_LS_LOSSLESS, "cannot hold this image"),  # 1-bit
        ("SC_ybr_full_422_uncompressed.dcm", RLE_LOSSLESS, "subsampled"),
    ],
)
def test_impossible_targets_raise(name: str, target: str, reason: str) -> None:
    path = _path(name)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    stored = str(source.file_meta.TransferSyntaxUID)
    assert not can_transcode(stored, target, source)
    with pytest.raises(TranscodeError, match=reason):
        transcode(path, target)


def test_can_transcode_without_attributes_judges_syntaxes_only() -> None:
    assert can_transcode(EXPLICIT_LE, EXPLICIT_LE)
    assert can_transcode("1.2.840.10008.1.2.4.50", EXPLICIT_LE)
    assert can_transcode("1.2.840.10008.1.2.4.50", RLE_LOSSLESS)
    assert can_transcode("1.2.840.10008.1.2.2", JPEG_2000_LOSSLESS)
    assert can_transcode("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.70")
    assert not can_transcode(EXPLICIT_LE, "1.2.840.10008.1.2.4.50")
    assert not can_transcode(EXPLICIT_LE, "1.2.840.10008.1.2.4.81")
    assert not can_transcode(EXPLICIT_LE, "1.2.840.10008.1.2.4.201")
    assert not can_transcode("1.2.840.10008.1.2.4.102", EXPLICIT_LE)  # MPEG-4: no decoder


def test_undecodable_pixel_data_raises() -> None:
    path = _path("JPEG-lossy.dcm")  # a 12-bit JPEG that no installed plugin decodes
    with pytest.raises(TranscodeError, match="cannot re-encode the instance"):
        transcode(path, EXPLICIT_LE)
