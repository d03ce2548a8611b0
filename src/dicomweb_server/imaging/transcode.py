"""Re-encoding stored instances into another transfer syntax for retrieval.

WADO-RS delivers ``application/dicom`` in Explicit VR Little Endian unless the client asks
for another syntax or for the stored one (PS3.18 Section 8.7.3.5.2), so an instance stored in
another syntax is re-encoded on the way out; the stored bytes are never changed. Targets are
Explicit VR Little Endian and the lossless compressed syntaxes that
:mod:`dicomweb_server.imaging.codecs` can encode (RLE Lossless, JPEG-LS Lossless, JPEG 2000
Lossless): the archive never makes a lossy copy unasked. Re-encoding is lossless, so the
SOP Instance UID is kept.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import UID
from pydicom.valuerep import VR

from dicomweb_server.dicom.transfer_syntax import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    is_uncompressed,
)
from dicomweb_server.imaging.codecs import (
    ENCAPSULATED_UNCOMPRESSED,
    FrameCodecError,
    big_endian_to_little,
    encode_frame,
    extract_unaligned_frame,
    frame_transcode_problem,
    native_frame,
    syntax_transcode_problem,
)
from dicomweb_server.imaging.render import decompression_pixel_count

__all__ = ["TranscodeError", "can_transcode", "transcode"]


class TranscodeError(Exception):
    """The instance cannot be delivered in the requested transfer syntax; says why."""


PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = (0x7FE00008, 0x7FE00009)
_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _has_image(attrs: Dataset) -> bool:
    return "Rows" in attrs and "BitsAllocated" in attrs


def can_transcode(source: str, target: str, attrs: Dataset | None = None) -> bool:
    """Whether :func:`transcode` can turn an instance stored in `source` into `target`.

    Parameters
    ----------
    source, target : str
        The stored and the wanted transfer syntax UIDs.
    attrs : pydicom.dataset.Dataset, optional
        The instance's attributes without Pixel Data. When given, the image's constraints are
        applied too (e.g. JPEG-LS holds at most 16 bits per sample, PS3.5 Section 8.2.3), and
        an instance without an image (no Rows / Bits Allocated: SR, KOS ...) is deliverable in
        any offered target, since only Pixel Data encoding differs between them. Without it
        the answer is on syntax availability alone: a decoder for `source`, an encoder for
        `target`, and `target` lossless.

    Returns
    -------
    bool
    """
    if source == target:
        return True
    if attrs is None:
        return syntax_transcode_problem(source, target) is None
    if not _has_image(attrs):
        return syntax_transcode_problem(EXPLICIT_VR_LITTLE_ENDIAN, target) is None
    return frame_transcode_problem(attrs, source, target) is None


def _to_little_endian(dataset: Dataset) -> None:
    """Re-express a big-endian data set's binary values little-endian, in place.

    pydicom's writer refuses to change endianness by itself: every value is decoded while the
    data set still reads as big-endian and word-sized binary values are byte-swapped (PS3.5
    Section 7.3). Native Pixel Data is swapped word by word as well rather than decoded, so
    YCbCr samples, subsampling and unused bits stay exactly as stored; 8-bit OW data, swapped
    in pairs, becomes OB.
    """
    for element in dataset.iterall():
        value = element.value  # decode while the encoding is still known
        size = _WORD_SIZES.get(element.VR)
        if (
            size
            and element.tag != PIXEL_DATA
            and isinstance(value, bytes)
            and len(value) % size == 0
        ):
            element.value = np.frombuffer(value, dtype=f">u{size}").astype(f"<u{size}").tobytes()
    if PIXEL_DATA in dataset:
        element = dataset[PIXEL_DATA]
        bits_allocated = int(dataset.BitsAllocated)
        value = bytes(element.value)
        if len(value) % 2 and bits_allocated == 8 and element.VR == VR.OW:
            value += b"\0"
        data = big_endian_to_little(value, bits_allocated, str(element.VR))
        if len(data) % 2:
            data += b"\0"
        element.value = data
        element.VR = VR.OW if bits_allocated > 8 else VR.OB


def _decapsulate(dataset: Dataset) -> None:
    """Turn Encapsulated Uncompressed Pixel Data (PS3.5 Annex A.4) into a native value.

    Its fragments are native little-endian frames, possibly padded to even length; pydicom
    3.0 has no decoder for it, so the frames are joined here.
    """
    frames = int(dataset.get("NumberOfFrames") or 1)
    value = b"".join(
        native_frame(dataset, frame, ENCAPSULATED_UNCOMPRESSED)
        for frame in generate_frames(dataset.PixelData, number_of_frames=frames)
    )
    if len(value) % 2:
        value += b"\0"
    dataset.PixelData = value
    element = dataset[PIXEL_DATA]
    element.is_undefined_length = False
    element.VR = VR.OW if int(dataset.BitsAllocated) > 8 else VR.OB


def _drop_offset_tables(dataset: Dataset) -> None:
    # An Extended Offset Table describes the encapsulated value it came with (PS3.3
    # C.7.6.3.1.8); pydicom's decompress() leaves it behind.
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in dataset:
            delattr(dataset, keyword)


def _native_frames(dataset: Dataset) -> list[bytes]:
    """The frames of the data set's native little-endian Pixel Data (PS3.5 Section 8.1.1)."""
    value = bytes(dataset.PixelData)
    frames = int(dataset.get("NumberOfFrames") or 1)
    bits = (
        int(dataset.Rows)
        * int(dataset.Columns)
        * int(dataset.get("SamplesPerPixel") or 1)
        * int(dataset.BitsAllocated)
    )
    if bits % 8:
        return [extract_unaligned_frame(value, dataset, index) for index in range(frames)]
    size = bits // 8
    return [value[index * size : (index + 1) * size] for index in range(frames)]


def _compress(dataset: Dataset, target: str) -> None:
    """Encode the data set's native little-endian Pixel Data as `target`, in place.

    Does what ``Dataset.compress()`` does, with the frame encoder of
    :mod:`~dicomweb_server.imaging.codecs` (which works around pydicom's RLE segment sizing
    for Bits Stored <= 8 in 16-bit containers) and without generating a new SOP Instance UID:
    each frame becomes one fragment behind a Basic Offset Table (PS3.5 Section A.4), or an
    Extended Offset Table when the offsets would not fit 32 bits (PS3.3 C.7.6.3.1.8).
    """
    problem = frame_transcode_problem(dataset, EXPLICIT_VR_LITTLE_ENDIAN, target)
    if problem is not None:
        raise TranscodeError(problem)
    encoded = [encode_frame(dataset, frame, target) for frame in _native_frames(dataset)]
    total = (len(encoded) - 1) * 8 + sum(len(frame) for frame in encoded[:-1])
    if total > 2**32 - 1:
        dataset.PixelData, dataset.ExtendedOffsetTable, dataset.ExtendedOffsetTableLengths = (
            encapsulate_extended(encoded)
        )
    else:
        dataset.PixelData = encapsulate(encoded, has_bot=True)
    element = dataset[PIXEL_DATA]
    element.VR = VR.OB
    element.is_undefined_length = True
    if int(dataset.get("SamplesPerPixel") or 1) > 1:
        dataset.PlanarConfiguration = 0  # frames are encoded colour-by-pixel


def transcode(path: Path | io.BytesIO, target: str, *, max_pixels: int | None = None) -> bytes:
    """Return the Part 10 bytes of the instance re-encoded in `target`.

    The Pixel Data is decompressed as pydicom's ``decompress()`` does (YCbCr from JPEG
    becomes RGB, the image attributes follow), big-endian data is swapped to little endian,
    and the native result is kept (Explicit VR Little Endian) or re-encoded losslessly frame
    by frame. The data set is written Explicit VR Little Endian, which every target shares
    (PS3.5 Section 10 and Annex A.4); an instance without Pixel Data (SR, KOS ...) is thus
    valid in any target syntax, only its file meta Transfer Syntax UID changing.

    Parameters
    ----------
    path : pathlib.Path or io.BytesIO
        The stored Part 10 file.
    target : str
        The transfer syntax UID to deliver.
    max_pixels : int, optional
        Decompression-bomb guard: refuse to decompress Pixel Data whose attributes claim
        more samples (Rows x Columns x Samples per Pixel x Number of Frames) than this.

    Returns
    -------
    bytes
        A Part 10 file (PS3.10 Section 7.1) in `target`; the stored bytes when `target` is the
        stored syntax.

    Raises
    ------
    TranscodeError
        If `target` is not offered (lossy, or no encoder installed), the pixel data cannot be
        decoded, or the image does not fit `target`'s constraints.
    """
    try:
        dataset = pydicom.dcmread(path)
        source = str(dataset.file_meta.TransferSyntaxUID)
        if source == target:
            return _file_bytes(path)
        problem = syntax_transcode_problem(EXPLICIT_VR_LITTLE_ENDIAN, target)
        if problem is not None:
            raise TranscodeError(problem)
        has_float_pixels = any(tag in dataset for tag in _FLOAT_PIXEL_DATA)
        if has_float_pixels and target != EXPLICIT_VR_LITTLE_ENDIAN:
            raise TranscodeError(
                f"float pixel data can only be delivered uncompressed, not in {target}"
            )
        if PIXEL_DATA in dataset:
            if source == ENCAPSULATED_UNCOMPRESSED:
                _decapsulate(dataset)
            elif not is_uncompressed(source):
                problem = syntax_transcode_problem(source, EXPLICIT_VR_LITTLE_ENDIAN)
                if problem is not None:
                    raise TranscodeError(problem)
                count = decompression_pixel_count(dataset)
                if max_pixels is not None and count > max_pixels:
                    raise TranscodeError(
                        f"decoding the instance would produce {count} pixel samples, more "
                        f"than this server decodes at once ({max_pixels}, "
                        "DICOMWEB_MAX_RENDER_PIXELS)"
                    )
                dataset.decompress(generate_instance_uid=False)
            elif source == EXPLICIT_VR_BIG_ENDIAN:
                _to_little_endian(dataset)
            _drop_offset_tables(dataset)
            if target != EXPLICIT_VR_LITTLE_ENDIAN:
                _compress(dataset, target)
        elif source == EXPLICIT_VR_BIG_ENDIAN:
            _to_little_endian(dataset)
        dataset.file_meta.TransferSyntaxUID = UID(target)
        output = io.BytesIO()
        pydicom.dcmwrite(
            output, dataset, implicit_vr=False, little_endian=True, force_encoding=True
        )
        return output.getvalue()
    except TranscodeError:
        raise
    except FrameCodecError as exc:
        raise TranscodeError(str(exc)) from exc
    except Exception as exc:  # pydicom and codec plugins raise many types
        raise TranscodeError(f"cannot re-encode the instance: {exc}") from exc


def _file_bytes(path: Path | io.BytesIO) -> bytes:
    if isinstance(path, io.BytesIO):
        return path.getvalue()
    return path.read_bytes()
