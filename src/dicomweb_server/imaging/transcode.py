"""Re-encoding stored instances into another transfer syntax for retrieval.

WADO-RS delivers ``application/dicom`` in Explicit VR Little Endian unless the client asks
for another syntax or for the stored one (PS3.18 8.7.3.5.2), so an instance stored in another
syntax is re-encoded on the way out; the stored bytes are never changed. Decoding compressed
pixel data uses pydicom's pixel decoders with the optional pylibjpeg / pyjpegls plugins.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels.utils import pack_bits
from pydicom.uid import UID

from dicomweb_server.dicom.transfer_syntax import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    is_uncompressed,
)


class TranscodeError(Exception):
    """The instance cannot be delivered in the requested transfer syntax."""


def can_transcode(source: str, target: str) -> bool:
    """Whether :func:`transcode` can turn ``source`` into ``target``."""
    if source == target:
        return True
    if target != EXPLICIT_VR_LITTLE_ENDIAN:
        return False
    if is_uncompressed(source):
        return True
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return bool(get_decoder(UID(source)).is_available)
    except (NotImplementedError, ValueError, ImportError):
        return False


_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
PIXEL_DATA = 0x7FE00010


def _to_little_endian(dataset: pydicom.Dataset) -> None:
    """Re-express a big-endian data set's binary values little-endian, in place.

    pydicom's writer refuses to change endianness by itself: every value is decoded while the
    data set still reads as big-endian, word-sized binary values are byte-swapped, and native
    Pixel Data is rewritten from its decoded array (which also undoes the word swap of 8-bit
    OW data), interleaved and padded to even length.
    """
    pixels = dataset.pixel_array if PIXEL_DATA in dataset else None
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
    if pixels is not None:
        if int(dataset.BitsAllocated) == 1:
            data = pack_bits(pixels)
        else:
            data = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        if len(data) % 2:
            data += b"\0"
        if int(dataset.get("SamplesPerPixel", 1)) > 1:
            dataset.PlanarConfiguration = 0
        dataset.PixelData = data
        dataset["PixelData"].VR = "OW" if int(dataset.BitsAllocated) > 8 else "OB"


def transcode(path: Path | io.BytesIO, target: str) -> bytes:
    """Return the Part 10 bytes of the instance re-encoded in ``target``."""
    if target != EXPLICIT_VR_LITTLE_ENDIAN:
        raise TranscodeError(f"transcoding to {target} is not supported")
    try:
        dataset = pydicom.dcmread(path)
        source = str(dataset.file_meta.TransferSyntaxUID)
        if not is_uncompressed(source):
            dataset.decompress()
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
    except Exception as exc:  # pydicom and codec plugins raise many types
        raise TranscodeError(f"cannot re-encode the instance: {exc}") from exc
