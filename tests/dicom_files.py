"""Test DICOM data: pydicom's bundled files and generated studies."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

# Bundled files covering the transfer syntaxes and object types a PACS meets.
BUNDLED = [
    "CT_small.dcm",  # CT, explicit VR little endian
    "MR_small.dcm",  # MR
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless (process 14, SV1)
    "JPGExtended.dcm",  # JPEG extended (process 2 & 4)
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS
    "MR_small_RLE.dcm",  # RLE
    "examples_ybr_color.dcm",  # multi-frame (30) ultrasound, JPEG baseline YBR
    "SC_rgb_rle_2frame.dcm",  # multi-frame RLE
    "liver_1frame.dcm",  # segmentation
    "waveform_ecg.dcm",  # waveform
    "examples_palette.dcm",  # palette colour
    "rtplan.dcm",  # RT Plan
    "rtdose.dcm",  # RT Dose, multi-frame
    "test-SR.dcm",  # structured report
    "image_dfl.dcm",  # deflated explicit VR little endian
    "SC_rgb_small_odd_big_endian.dcm",  # odd-sized big endian
]


def bundled_path(name: str) -> Path:
    return Path(str(get_testdata_file(name)))


def bundled_bytes(name: str) -> bytes:
    return bundled_path(name).read_bytes()


def make_ct(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_name: str = "Doe^Jane",
    patient_id: str = "PID-1",
    rows: int = 64,
    columns: int = 64,
    frames: int = 1,
    modality: str = "CT",
    instance_number: int = 1,
    extra: dict[str, object] | None = None,
    pixel_data: bytes | None = None,
) -> bytes:
    """A small valid CT-like Part 10 file with native pixel data."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500"
    ds.Modality = modality
    ds.InstanceNumber = instance_number
    ds.SeriesNumber = 1
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = (
        pixel_data
        if pixel_data is not None
        else bytes(
            (index * 7 + int(ds.SOPInstanceUID.split(".")[-1][-3:] or 0)) % 256
            for index in range(rows * columns * 2 * frames)
        )
    )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart(
    parts: list[bytes], boundary: str = "test-boundary-1234", part_type: str = "application/dicom"
) -> bytes:
    chunks: list[bytes] = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode())
        chunks.append(part)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def stow_content_type(boundary: str = "test-boundary-1234") -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def split_multipart(body: bytes, content_type: str) -> Iterator[tuple[dict[str, str], bytes]]:
    """Parse a multipart/related response body into (headers, content) pairs."""
    boundary = None
    for piece in content_type.split(";"):
        name, _, value = piece.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    assert boundary, content_type
    delimiter = b"--" + boundary.encode()
    sections = body.split(b"\r\n" + delimiter)
    first = sections[0]
    assert first.startswith(delimiter), first[:80]
    sections[0] = first[len(delimiter) :]
    for section in sections:
        if section.startswith(b"--"):
            break
        head, _, content = section[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n"):
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        yield headers, content


def dataset_from_bytes(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def instance_path(data: bytes) -> str:
    """The WADO-RS path of an instance, relative to the DICOMweb root."""
    ds = dataset_from_bytes(data)
    return (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def with_new_uids(data: bytes, study: str | None = None, series: str | None = None) -> bytes:
    """A file under a fresh SOP Instance UID, and the given or fresh study and series UIDs
    (several bundled files share their UIDs)."""
    ds = dataset_from_bytes(data)
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()
