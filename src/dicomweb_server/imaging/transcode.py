"""Re-encoding stored instances into another transfer syntax for retrieval.

WADO-RS delivers ``application/dicom`` in Explicit VR Little Endian unless the client asks
for another syntax or for the stored one (PS3.18 8.7.3.5.2), so an instance stored in another
syntax is re-encoded on the way out; the stored bytes are never changed. Decoding compressed
pixel data uses pydicom's pixel decoders with the optional pylibjpeg / pyjpegls plugins.
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.uid import UID

from dicomweb_server.dicom.transfer_syntax import EXPLICIT_VR_LITTLE_ENDIAN, is_uncompressed


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


def transcode(path: Path | io.BytesIO, target: str) -> bytes:
    """Return the Part 10 bytes of the instance re-encoded in ``target``."""
    if target != EXPLICIT_VR_LITTLE_ENDIAN:
        raise TranscodeError(f"transcoding to {target} is not supported")
    try:
        dataset = pydicom.dcmread(path)
        source = str(dataset.file_meta.TransferSyntaxUID)
        if not is_uncompressed(source):
            dataset.decompress()
        elif (
            "PixelData" in dataset
            and not dataset.original_encoding[1]
            and dataset.BitsAllocated > 8
        ):
            # pydicom writes native pixel data as it holds it: big-endian words are swapped
            # by reading the array and writing it back little-endian.
            array = dataset.pixel_array
            dataset.PixelData = array.astype(array.dtype.newbyteorder("<")).tobytes()
        dataset.file_meta.TransferSyntaxUID = UID(target)
        output = io.BytesIO()
        dataset.save_as(output, enforce_file_format=True, implicit_vr=False, little_endian=True)
        return output.getvalue()
    except TranscodeError:
        raise
    except Exception as exc:  # pydicom and codec plugins raise many types
        raise TranscodeError(f"cannot re-encode the instance: {exc}") from exc
