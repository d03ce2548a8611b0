"""Decoding, re-encoding and transcoding single frames of pixel data.

WADO-RS frame retrieval (PS3.18 Section 10.4.1.1.3) answers with the frames of an instance
in the representation the client accepts (PS3.18 Section 8.7.3.3): as stored, as native
``application/octet-stream`` bytes in Explicit VR Little Endian (PS3.18 Section 8.7.3.3.1,
Table 8.7.3-4), or as a compressed bulk data media type in a given transfer syntax (PS3.18
Table 8.7.3-5). The archive keeps the byte ranges of every stored frame, so this module works
on one frame at a time and never parses or decodes the whole instance: a frame of a multi-GB
multi-frame object costs what a single-frame image costs.

All pixel work goes through pydicom's decoders and encoders (``pydicom.pixels``) and the
optional pylibjpeg / pyjpegls plugins; nothing here implements a codec. The functions take
the instance's image attributes (a :class:`~pydicom.dataset.Dataset` without Pixel Data) and
the transfer syntax explicitly, since the caller's data set may have no file meta information.

Only lossless re-encoding is offered (RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless, and
any other lossless syntax pydicom can encode once a plugin provides it): the archive never
makes lossy copies unasked. High-Throughput JPEG 2000 (PS3.5 Section 8.2, UIDs
``1.2.840.10008.1.2.4.201``-``203``) cannot be produced: pydicom 3.0 has no HTJ2K encoder, and
the OpenJPEG builds installed (2.5.x, in pylibjpeg-openjpeg and Pillow) decode HT code-blocks
but cannot encode them. HTJ2K *sources* decode fine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import Decoder, get_decoder
from pydicom.pixels.encoders.base import ENCODING_PROFILES, Encoder, get_encoder
from pydicom.uid import UID

from dicomweb_server.dicom.transfer_syntax import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    bulk_media_type,
)

__all__ = [
    "ENCAPSULATED_UNCOMPRESSED",
    "JPEG_2000_LOSSLESS",
    "JPEG_LS_LOSSLESS",
    "LOSSLESS_TARGETS",
    "RLE_LOSSLESS",
    "FrameCodecError",
    "big_endian_to_little",
    "can_transcode_frame",
    "decode_frame",
    "encode_frame",
    "extract_unaligned_frame",
    "frame_media_type",
    "frame_transcode_problem",
    "native_attributes",
    "native_frame",
    "syntax_transcode_problem",
    "transcode_frame",
    "transcoded_attributes",
]

RLE_LOSSLESS: Final = "1.2.840.10008.1.2.5"
JPEG_LS_LOSSLESS: Final = "1.2.840.10008.1.2.4.80"
JPEG_2000_LOSSLESS: Final = "1.2.840.10008.1.2.4.90"
ENCAPSULATED_UNCOMPRESSED: Final = "1.2.840.10008.1.2.1.98"

#: Transfer syntaxes a frame or instance may be re-encoded into: uncompressed Explicit VR
#: Little Endian and the lossless compressed syntaxes of PS3.5 Section 8.2 (JPEG Lossless
#: Process 14 and SV1, RLE, JPEG-LS Lossless, JPEG 2000 Lossless, HTJ2K Lossless and its RPCL
#: variant). Whether one is really available depends on the installed encoders, which
#: :func:`syntax_transcode_problem` checks; today JPEG Lossless and HTJ2K have none.
LOSSLESS_TARGETS: Final = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    RLE_LOSSLESS,
    JPEG_LS_LOSSLESS,
    JPEG_2000_LOSSLESS,
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
)

# Native little-endian syntaxes: a stored frame is already the octet-stream payload. The
# deflated syntax deflates the whole data set, so a frame read from the parsed (inflated)
# data set is plain little-endian native data (PS3.5 Section A.5).
_NATIVE_LITTLE_ENDIAN: Final = frozenset(
    {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN}
)

# Colour spaces pydicom's decoders turn into RGB when decompressing (as_rgb, the default of
# pixel_array and decompress()): YCbCr from JPEG / JPEG-LS / RLE, and the JPEG 2000
# multi-component transforms, which the codec itself reverses (PS3.3 C.7.6.3.1.2).
_DECODED_AS_RGB: Final = frozenset({"YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})

# OpenJPEG as driven by pylibjpeg-openjpeg always uses 6 DWT resolution levels, so it rejects
# images smaller than 2**5 pixels in either direction; and it encodes at most 24 bits/sample.
_J2K_MIN_SIZE: Final = 32
_J2K_MAX_BITS_STORED: Final = 24
# pyjpegls gives CharLS an output buffer twice the size of the input; for tiny frames the
# codestream header plus near-incompressible content can exceed it, so we require frames of
# at least this many input bytes (noise frames of up to ~150 bytes fail in practice).
_JLS_MIN_INPUT_BYTES: Final = 256


_IMAGE_KEYWORDS: Final = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
)


class FrameCodecError(Exception):
    """A frame cannot be decoded, or encoded into the requested transfer syntax.

    The message is a human-readable reason, suitable for a 406 or 400 response body.
    """


@dataclass(frozen=True, slots=True)
class _Image:
    """The Image Pixel Module attributes a codec needs (PS3.3 Section C.7.6.3)."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int

    @classmethod
    def of(cls, attrs: Dataset) -> _Image:
        """Read the attributes, tolerating absent optional ones the way readers usually do.

        Rows, Columns, Bits Allocated and Photometric Interpretation are required; Samples per
        Pixel defaults to 1, Bits Stored to Bits Allocated, Pixel Representation and Planar
        Configuration to 0.
        """
        try:
            rows = int(attrs.Rows)
            columns = int(attrs.Columns)
            bits_allocated = int(attrs.BitsAllocated)
            photometric = str(attrs.PhotometricInterpretation).strip()
            samples = int(attrs.get("SamplesPerPixel") or 1)
            bits_stored = int(attrs.get("BitsStored") or bits_allocated)
            representation = int(attrs.get("PixelRepresentation") or 0)
            planar = int(attrs.get("PlanarConfiguration") or 0)
        except (AttributeError, TypeError, ValueError) as exc:
            raise FrameCodecError(
                f"the image attributes are missing or invalid ({exc}); Rows, Columns, Bits "
                "Allocated and Photometric Interpretation are needed to handle pixel data"
            ) from exc
        if min(rows, columns, samples, bits_allocated, bits_stored) < 1:
            raise FrameCodecError(
                "the image attributes are invalid: Rows, Columns, Samples per Pixel, Bits "
                "Allocated and Bits Stored must all be positive"
            )
        return cls(
            rows,
            columns,
            samples,
            bits_allocated,
            bits_stored,
            representation,
            photometric,
            planar,
        )

    def native_length(self) -> int:
        """Bytes of one native frame (PS3.5 Section 8.1.1), rounded up to a whole byte.

        Native ``YBR_FULL_422`` is horizontally subsampled: two luminance samples share one
        pair of chrominance samples, so a frame holds two thirds of the full samples
        (PS3.3 Section C.7.6.3.1.2).
        """
        bits = self.rows * self.columns * self.samples_per_pixel * self.bits_allocated
        if self.photometric_interpretation == "YBR_FULL_422":
            bits = bits // 3 * 2
        return math.ceil(bits / 8)

    def options(self) -> dict[str, Any]:
        """pydicom decoder / encoder options for a single frame of this image."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples_per_pixel,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric_interpretation,
            "planar_configuration": self.planar_configuration,
            "number_of_frames": 1,
        }


def _name(uid: str) -> str:
    name = UID(uid).name
    return uid if name == uid else f"{name} ({uid})"


def _is_native(transfer_syntax: str) -> bool:
    return transfer_syntax in _NATIVE_LITTLE_ENDIAN or transfer_syntax in (
        EXPLICIT_VR_BIG_ENDIAN,
        ENCAPSULATED_UNCOMPRESSED,
    )


def _decoder(transfer_syntax: str) -> Decoder:
    try:
        decoder = get_decoder(UID(transfer_syntax))
    except (NotImplementedError, ValueError) as exc:
        raise FrameCodecError(f"no decoder exists for {_name(transfer_syntax)}") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise FrameCodecError(
            f"the decoder for {_name(transfer_syntax)} is not installed ({missing})"
        )
    return decoder


def _encoder(transfer_syntax: str) -> Encoder:
    try:
        encoder = get_encoder(UID(transfer_syntax))
    except (NotImplementedError, ValueError) as exc:
        raise FrameCodecError(f"no installed codec can encode {_name(transfer_syntax)}") from exc
    if not encoder.is_available:
        missing = "; ".join(encoder.missing_dependencies)
        raise FrameCodecError(
            f"the encoder for {_name(transfer_syntax)} is not installed ({missing})"
        )
    return encoder


def _source_problem(source: str) -> str | None:
    if _is_native(source):
        return None
    try:
        _decoder(source)
    except FrameCodecError as exc:
        return str(exc)
    return None


def _target_problem(target: str) -> str | None:
    if target == EXPLICIT_VR_LITTLE_ENDIAN:
        return None
    if target not in LOSSLESS_TARGETS:
        return (
            f"{_name(target)} is not offered: pixel data is only re-encoded into Explicit VR "
            "Little Endian or a lossless compressed transfer syntax, never into a lossy one "
            "unasked"
        )
    try:
        _encoder(target)
    except FrameCodecError as exc:
        return str(exc)
    return None


def syntax_transcode_problem(source: str, target: str) -> str | None:
    """Why pixel data in `source` cannot be re-encoded as `target`, judging by syntax alone.

    Parameters
    ----------
    source, target : str
        Transfer syntax UIDs.

    Returns
    -------
    str or None
        ``None`` when a decoder for `source` (none is needed for native data) and an encoder
        for `target` are installed and `target` is lossless; otherwise a human-readable reason.
        Image-specific constraints are checked by :func:`frame_transcode_problem`.
    """
    if source == target:
        return None
    return _target_problem(target) or _source_problem(source)


def transcoded_attributes(attrs: Dataset, source: str, target: str) -> Dataset:
    """The image attributes that describe frames :func:`transcode_frame` returns.

    Decompression can change how the samples must be read: pydicom converts YCbCr decoded
    from JPEG, JPEG-LS or RLE to RGB, and JPEG 2000 codecs undo the ICT/RCT component
    transforms (PS3.3 Section C.7.6.3.1.2), while decoded colour frames are colour-by-pixel
    (Planar Configuration 0, PS3.3 Section C.7.6.3.1.3). Frames of native sources delivered
    uncompressed keep their layout (no decoding happens), and every frame we encode is
    colour-by-pixel. The Photometric Interpretation and Planar Configuration here are
    therefore the ones to announce with transcoded frames, and they may differ from the
    stored ones.

    Parameters
    ----------
    attrs : pydicom.dataset.Dataset
        The stored instance's image attributes; never modified (callers may share it).
    source, target : str
        The stored and the delivered transfer syntax UIDs.

    Returns
    -------
    pydicom.dataset.Dataset
        A new data set with the Image Pixel attributes (and Number of Frames) of `attrs`,
        adjusted as described.
    """
    out = Dataset()
    for keyword in _IMAGE_KEYWORDS:
        if keyword in attrs:
            setattr(out, keyword, attrs[keyword].value)
    if source == target:
        return out
    colour = int(attrs.get("SamplesPerPixel") or 1) > 1
    if not _is_native(source):
        photometric = str(attrs.get("PhotometricInterpretation", "")).strip()
        if photometric in _DECODED_AS_RGB:
            out.PhotometricInterpretation = "RGB"
        if colour:
            out.PlanarConfiguration = 0
    elif colour and target != EXPLICIT_VR_LITTLE_ENDIAN:
        out.PlanarConfiguration = 0
    return out


def native_attributes(attrs: Dataset, transfer_syntax: str) -> Dataset:
    """The image attributes that describe what :func:`native_frame` returns.

    Shorthand for ``transcoded_attributes(attrs, transfer_syntax, EXPLICIT_VR_LITTLE_ENDIAN)``.
    """
    return transcoded_attributes(attrs, transfer_syntax, EXPLICIT_VR_LITTLE_ENDIAN)


def _trimmed(frame: bytes, length: int) -> bytes:
    if len(frame) < length:
        raise FrameCodecError(
            f"the frame holds {len(frame)} bytes but the image attributes call for {length}"
        )
    return frame if len(frame) == length else frame[:length]


def big_endian_to_little(value: bytes, bits_allocated: int, pixel_vr: str = "OB") -> bytes:
    """Re-express native big-endian pixel data little-endian, byte for byte.

    Explicit VR Big Endian (retired, PS3.5 Annex A.3) stores each OW word most significant
    byte first (PS3.5 Section 7.3); converting the words, rather than decoding and re-encoding
    sample values, keeps everything a decoder would otherwise alter: unused high bits, YCbCr
    samples and ``YBR_FULL_422`` subsampling. 8-bit data stored as OB needs nothing; 8-bit
    data stored as OW was swapped in byte pairs and is swapped back. 1-bit data is left as is,
    as pydicom reads it.

    Parameters
    ----------
    value : bytes
        Big-endian native pixel data: one frame or the whole Pixel Data value. For 8-bit OW
        data it must start on a word boundary and hold whole words.
    bits_allocated : int
        (0028,0100) Bits Allocated: 1, 8, 16, 32 or 64.
    pixel_vr : str, optional
        The Pixel Data VR, ``"OB"`` (default) or ``"OW"``; matters for 8-bit data only.

    Returns
    -------
    bytes
        The same samples in little-endian byte order, same length.

    Raises
    ------
    FrameCodecError
        If Bits Allocated is not 1 or a multiple of 8 up to 64, or 8-bit OW data has an odd
        length (its last sample's word partner is missing).
    """
    if bits_allocated == 1:
        return value
    if bits_allocated == 8:
        if pixel_vr != "OW":
            return value
        if len(value) % 2:
            raise FrameCodecError(
                "8-bit big-endian pixel data stored as OW must be given in whole 16-bit words"
            )
        return np.frombuffer(value, dtype=">u2").astype("<u2").tobytes()
    if bits_allocated not in (16, 32, 64):
        raise FrameCodecError(
            f"native pixel data with Bits Allocated {bits_allocated} is not supported in "
            "Explicit VR Big Endian"
        )
    size = bits_allocated // 8
    usable = len(value) - len(value) % size
    swapped = np.frombuffer(value[:usable], dtype=f">u{size}").astype(f"<u{size}").tobytes()
    return swapped + value[usable:]


def _decode(
    image: _Image, frame: bytes, transfer_syntax: str, pixel_vr: str
) -> tuple[NDArray[Any], dict[str, str | int]]:
    """Decode one frame with pydicom; returns the array and the resulting image properties."""
    options = image.options()
    # Without the keyword pydicom skips the masking of unused high bits it does for whole
    # data sets (PS3.5 Section 8.1.1).
    options["pixel_keyword"] = "PixelData"
    src: bytes
    if transfer_syntax in _NATIVE_LITTLE_ENDIAN or transfer_syntax == ENCAPSULATED_UNCOMPRESSED:
        uid = EXPLICIT_VR_LITTLE_ENDIAN
        src = _trimmed(frame, image.native_length())
    elif transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
        uid = EXPLICIT_VR_BIG_ENDIAN
        length = image.native_length()
        if image.bits_allocated == 8 and pixel_vr == "OW":
            # Byte pairs are swapped (PS3.5 Section 7.3): an odd-length frame needs the
            # partner byte of its last sample, which pydicom expects to find after it.
            length += length % 2
        src = _trimmed(frame, length)
        options["pixel_vr"] = pixel_vr
    else:
        # The decoders find frames in an encapsulated value (PS3.5 Section A.4); one frame
        # with number_of_frames=1 is its own item sequence, whatever fragments it came from.
        uid = transfer_syntax
        src = encapsulate([frame])
    decoder = _decoder(uid)
    try:
        return decoder.as_array(src, index=0, **options)
    except Exception as exc:  # pydicom and its plugins raise many exception types
        raise FrameCodecError(f"cannot decode the {_name(transfer_syntax)} frame: {exc}") from exc


def decode_frame(
    attrs: Dataset, frame: bytes, transfer_syntax: str, *, pixel_vr: str = "OB"
) -> NDArray[Any]:
    """Decode one stored frame to an array, as pydicom's ``pixel_array`` gives it.

    Used to render frames (PS3.18 Section 10.4.1.1.3 rendered resources, thumbnails). The
    result has the shape, dtype and values of ``pydicom.pixels.pixel_array(ds, index=i)`` for
    that frame of the whole instance: unused high bits masked, signedness applied, YCbCr
    converted to RGB, colour-by-pixel.

    Parameters
    ----------
    attrs : pydicom.dataset.Dataset
        The instance's image attributes (Rows, Columns, Bits Allocated ... ), without Pixel
        Data; Number of Frames is ignored since one frame is decoded. Not modified.
    frame : bytes
        The frame exactly as stored: for encapsulated syntaxes the concatenated fragment
        values of the frame (its codestream, PS3.5 Section A.4); for native syntaxes the
        frame's bytes in the stored byte order (1-bit frames not byte-aligned in the value
        must first go through :func:`extract_unaligned_frame`). For 8-bit big-endian OW data
        of odd frame length, include the following byte so the frame holds whole words.
    transfer_syntax : str
        The transfer syntax the frame is stored in; file meta information is not consulted.
    pixel_vr : str, optional
        The Pixel Data VR; only 8-bit Explicit VR Big Endian data stored as ``"OW"`` needs it.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns)`` or ``(rows, columns, samples)``.

    Raises
    ------
    FrameCodecError
        If no decoder is installed, the attributes are incomplete or the frame is corrupt.
    """
    array, _ = _decode(_Image.of(attrs), frame, transfer_syntax, pixel_vr)
    return array


def _array_bytes(array: NDArray[Any], bits_allocated: int) -> bytes:
    if bits_allocated == 1:
        # PS3.5 Section 8.1.1: 1-bit samples are packed eight to a byte, first pixel in the
        # least significant bit. (pydicom's decompress() would write one byte per pixel.)
        return np.packbits(array.astype(np.uint8, copy=False), bitorder="little").tobytes()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def native_frame(
    attrs: Dataset, frame: bytes, transfer_syntax: str, *, pixel_vr: str = "OB"
) -> bytes:
    """One frame as Explicit VR Little Endian native pixel data.

    This is the ``application/octet-stream`` payload of a frame (PS3.18 Section 8.7.3.3.1,
    Table 8.7.3-4): what pydicom's ``Dataset.decompress()`` would put in Pixel Data for this
    frame - little endian, colour-by-pixel, YCbCr from JPEG and the JPEG 2000 component
    transforms turned into RGB (see :func:`native_attributes` for the resulting attributes).
    Big-endian frames are byte-swapped word by word (:func:`big_endian_to_little`); native
    little-endian frames are returned unchanged, with no decoding at all.

    Parameters
    ----------
    attrs : pydicom.dataset.Dataset
        The instance's image attributes, without Pixel Data. Not modified.
    frame : bytes
        The frame as stored (see :func:`decode_frame`).
    transfer_syntax : str
        The transfer syntax the frame is stored in.
    pixel_vr : str, optional
        The Pixel Data VR; only 8-bit Explicit VR Big Endian data stored as ``"OW"`` needs it.

    Returns
    -------
    bytes
        The native frame; 1-bit frames are bit-packed (PS3.5 Section 8.1.1) and padded with
        zero bits to a whole byte.

    Raises
    ------
    FrameCodecError
        If the frame cannot be decoded.
    """
    if transfer_syntax in _NATIVE_LITTLE_ENDIAN:
        return frame
    image = _Image.of(attrs)
    if transfer_syntax == ENCAPSULATED_UNCOMPRESSED:
        return _trimmed(frame, image.native_length())
    if transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
        length = image.native_length()
        if image.bits_allocated == 8 and pixel_vr == "OW":
            frame = frame[: length + length % 2]
        else:
            frame = _trimmed(frame, length)
        return _trimmed(big_endian_to_little(frame, image.bits_allocated, pixel_vr), length)
    array, _ = _decode(image, frame, transfer_syntax, pixel_vr)
    return _array_bytes(array, image.bits_allocated)


def _encode_problem(image: _Image, target: str) -> str | None:
    """Why a native frame described by `image` cannot be encoded as `target`.

    Checks pydicom's encoding profiles, which restate the valid Image Pixel values per
    transfer syntax of PS3.5 Sections 8.2.2 (RLE, Table 8.2.2-1), 8.2.3 (JPEG-LS, Table
    8.2.3-1) and 8.2.4 (JPEG 2000, Table 8.2.4-1), then the limits of the installed plugins.
    """
    if target == EXPLICIT_VR_LITTLE_ENDIAN:
        return None
    if (problem := _target_problem(target)) is not None:
        return problem
    name = _name(target)
    if image.photometric_interpretation == "YBR_FULL_422":
        return (
            f"native YBR_FULL_422 pixel data is subsampled and {name} cannot carry it "
            "(PS3.3 Section C.7.6.3.1.2)"
        )
    profiles = ENCODING_PROFILES.get(UID(target))
    if profiles is not None and not any(
        image.photometric_interpretation == photometric
        and image.samples_per_pixel == samples
        and image.pixel_representation in representations
        and image.bits_allocated in allocated
        and image.bits_stored in stored
        for photometric, samples, representations, allocated, stored in profiles
    ):
        return (
            f"{name} cannot hold this image (Photometric Interpretation "
            f"{image.photometric_interpretation}, Samples per Pixel {image.samples_per_pixel}, "
            f"Bits Allocated {image.bits_allocated}, Bits Stored {image.bits_stored}, "
            f"Pixel Representation {image.pixel_representation}; PS3.5 Section 8.2)"
        )
    if target == JPEG_2000_LOSSLESS:
        if image.bits_stored > _J2K_MAX_BITS_STORED:
            return (
                f"the installed JPEG 2000 encoder (OpenJPEG) handles at most "
                f"{_J2K_MAX_BITS_STORED} bits per sample, the image has {image.bits_stored}"
            )
        if min(image.rows, image.columns) < _J2K_MIN_SIZE:
            return (
                f"the installed JPEG 2000 encoder (OpenJPEG, 6 resolution levels) needs images "
                f"of at least {_J2K_MIN_SIZE}x{_J2K_MIN_SIZE} pixels, the image is "
                f"{image.columns}x{image.rows}"
            )
    if target == JPEG_LS_LOSSLESS:
        sample_bytes = 1 if image.bits_stored <= 8 else 2
        size = image.rows * image.columns * image.samples_per_pixel * sample_bytes
        if size < _JLS_MIN_INPUT_BYTES:
            return (
                f"the frame is too small ({size} bytes) for the installed JPEG-LS encoder "
                f"(pyjpegls), which needs at least {_JLS_MIN_INPUT_BYTES}"
            )
    return None


def _native_array(image: _Image, native: bytes) -> NDArray[Any]:
    """A native little-endian frame as an array: unused bits masked, colour-by-pixel."""
    options = image.options()
    options["pixel_keyword"] = "PixelData"
    src = _trimmed(native, image.native_length())
    try:
        array, _ = _decoder(EXPLICIT_VR_LITTLE_ENDIAN).as_array(src, index=0, raw=True, **options)
    except FrameCodecError:
        raise
    except Exception as exc:  # pydicom raises several exception types
        raise FrameCodecError(f"the native frame does not match its attributes: {exc}") from exc
    return array


def _encode_array(image: _Image, array: NDArray[Any], target: str) -> bytes:
    """Encode a colour-by-pixel frame array; `image` must already pass :func:`_encode_problem`."""
    options = image.options()
    options["planar_configuration"] = 0
    if target == RLE_LOSSLESS:
        # RLE byte segments follow Bits Allocated (PS3.5 Annex G.2); pydicom 3.0 would size
        # them by Bits Stored when it is 8 or less in a 16-bit container and produce a stream
        # its own decoder rejects. The codestream does not record Bits Stored, so nothing is
        # lost by encoding the whole container.
        options["bits_stored"] = image.bits_allocated
    try:
        return bytes(_encoder(target).encode(array, **options))
    except FrameCodecError:
        raise
    except Exception as exc:  # pydicom and its plugins raise many exception types
        raise FrameCodecError(f"cannot encode the frame as {_name(target)}: {exc}") from exc


def encode_frame(attrs: Dataset, native: bytes, target: str, *, source: str | None = None) -> bytes:
    """Encode one native little-endian frame into the codestream of `target`.

    Offered targets (PS3.5 Section 8.2): RLE Lossless (1.2.840.10008.1.2.5), JPEG-LS Lossless
    (1.2.840.10008.1.2.4.80), JPEG 2000 Lossless (1.2.840.10008.1.2.4.90), and Explicit VR
    Little Endian (1.2.840.10008.1.2.1, identity). HTJ2K Lossless (1.2.840.10008.1.2.4.201,
    .202) and JPEG Lossless (.4.57, .4.70) are lossless too but no installed encoder produces
    them; lossy syntaxes are never offered. The result is one frame's codestream, ready to be
    sent as a compressed bulk data part (PS3.18 Table 8.7.3-5) or encapsulated as one fragment
    (PS3.5 Section A.4); colour frames are encoded colour-by-pixel (Planar Configuration 0).

    Parameters
    ----------
    attrs : pydicom.dataset.Dataset
        Image attributes describing `native`. When `source` is given they are the stored
        instance's attributes and are adjusted with :func:`native_attributes`, as needed for a
        frame that :func:`native_frame` produced from that syntax. Not modified.
    native : bytes
        One frame of native little-endian pixel data (PS3.5 Section 8.1.1).
    target : str
        The transfer syntax UID to encode into.
    source : str, optional
        The stored transfer syntax `native` was made from, if `attrs` are the stored ones.

    Returns
    -------
    bytes
        The encoded frame (`native` itself for Explicit VR Little Endian).

    Raises
    ------
    FrameCodecError
        If the target is not offered, its encoder is missing, the image does not fit the
        target's constraints, or encoding fails.
    """
    if source is not None:
        attrs = native_attributes(attrs, source)
    if target == EXPLICIT_VR_LITTLE_ENDIAN:
        return native
    image = _Image.of(attrs)
    if (problem := _encode_problem(image, target)) is not None:
        raise FrameCodecError(problem)
    return _encode_array(image, _native_array(image, native), target)


def frame_transcode_problem(attrs: Dataset, source: str, target: str) -> str | None:
    """Why :func:`transcode_frame` could not turn frames of this image from `source` into `target`.

    A cheap check, with no pixel work: decoder and encoder availability, lossless targets only,
    and the target's constraints (PS3.5 Section 8.2 tables, plugin limits) applied to the
    attributes the decoded frame will have (:func:`native_attributes`).

    Parameters
    ----------
    attrs : pydicom.dataset.Dataset
        The stored instance's image attributes.
    source, target : str
        The stored and the wanted transfer syntax UIDs.

    Returns
    -------
    str or None
        ``None`` if the frames can be transcoded (or `source` equals `target`), else a
        human-readable reason.
    """
    if source == target:
        return None
    if (problem := syntax_transcode_problem(source, target)) is not None:
        return problem
    try:
        stored = _Image.of(attrs)
        if source == EXPLICIT_VR_BIG_ENDIAN and stored.bits_allocated not in (1, 8, 16, 32, 64):
            return (
                f"native pixel data with Bits Allocated {stored.bits_allocated} is not "
                "supported in Explicit VR Big Endian"
            )
        image = _Image.of(native_attributes(attrs, source))
    except FrameCodecError as exc:
        return str(exc)
    return _encode_problem(image, target)


def can_transcode_frame(attrs: Dataset, source: str, target: str) -> bool:
    """Whether :func:`transcode_frame` can deliver frames of this image in `target`.

    See :func:`frame_transcode_problem`, which also says why not. Lossy targets (e.g.
    1.2.840.10008.1.2.4.50, .4.81, .4.91) are always refused: the archive never makes lossy
    copies unasked.
    """
    return frame_transcode_problem(attrs, source, target) is None


def transcode_frame(
    attrs: Dataset, frame: bytes, source: str, target: str, *, pixel_vr: str = "OB"
) -> bytes:
    """Re-encode one stored frame from `source` into `target` (PS3.18 Section 8.7.3.5).

    Parameters
    ----------
    attrs : pydicom.dataset.Dataset
        The stored instance's image attributes, without Pixel Data. Not modified.
    frame : bytes
        The frame as stored (see :func:`decode_frame`).
    source, target : str
        The stored and the wanted transfer syntax UIDs.
    pixel_vr : str, optional
        The Pixel Data VR; only 8-bit Explicit VR Big Endian data stored as ``"OW"`` needs it.

    Returns
    -------
    bytes
        `frame` unchanged when `source` equals `target`; the native frame
        (:func:`native_frame`) for Explicit VR Little Endian; else the target codestream.
        :func:`transcoded_attributes` gives the image attributes that describe the result.

    Raises
    ------
    FrameCodecError
        If the frame cannot be decoded or encoded; the message says why.
    """
    if source == target:
        return frame
    if (problem := frame_transcode_problem(attrs, source, target)) is not None:
        raise FrameCodecError(problem)
    if target == EXPLICIT_VR_LITTLE_ENDIAN:
        return native_frame(attrs, frame, source, pixel_vr=pixel_vr)
    stored = _Image.of(attrs)
    if _is_native(source):
        native = native_frame(attrs, frame, source, pixel_vr=pixel_vr)
        image = _Image.of(native_attributes(attrs, source))
        return _encode_array(image, _native_array(image, native), target)
    # Decode straight to the array the encoder wants, using the colour space the decoder
    # really produced rather than the predicted one.
    array, properties = _decode(stored, frame, source, pixel_vr)
    image = replace(
        stored,
        photometric_interpretation=str(
            properties.get("photometric_interpretation", stored.photometric_interpretation)
        ),
        planar_configuration=0,
    )
    if (problem := _encode_problem(image, target)) is not None:
        raise FrameCodecError(problem)
    return _encode_array(image, array, target)


def frame_media_type(transfer_syntax: str) -> str:
    """The media type of frames sent in `transfer_syntax` (PS3.18 Tables 8.7.3-4, 8.7.3-5).

    Native syntaxes, including Encapsulated Uncompressed, give ``application/octet-stream``.
    """
    return bulk_media_type(transfer_syntax)


def extract_unaligned_frame(value: bytes, attrs: Dataset, index: int) -> bytes:
    """Cut frame `index` out of a native Pixel Data value whose frames are not byte-aligned.

    Native frames follow each other with no padding (PS3.5 Section 8.1.1), so with Bits
    Allocated 1 and a per-frame pixel count that is not a multiple of 8, a frame starts
    mid-byte. Bits are packed least significant first, so the frame's first pixel is bit
    ``(index * bits_per_frame) % 8`` of its first byte. The frame is re-packed to start at
    bit 0 of byte 0 and padded with zero bits to a whole byte, which is how a single-frame
    value would hold it; works for any Bits Allocated.

    Parameters
    ----------
    value : bytes
        The whole native (little-endian) Pixel Data value.
    attrs : pydicom.dataset.Dataset
        Image attributes: Rows, Columns, Samples per Pixel, Bits Allocated.
    index : int
        0-based frame index.

    Returns
    -------
    bytes
        ``ceil(bits_per_frame / 8)`` bytes.

    Raises
    ------
    FrameCodecError
        If `index` is negative, the attributes are incomplete or `value` is too short.
    """
    try:
        bits = (
            int(attrs.Rows)
            * int(attrs.Columns)
            * int(attrs.get("SamplesPerPixel") or 1)
            * int(attrs.BitsAllocated)
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise FrameCodecError(f"the image attributes are missing or invalid ({exc})") from exc
    if index < 0 or bits < 1:
        raise FrameCodecError(f"cannot extract frame index {index} of a {bits}-bit frame")
    start = index * bits
    first, end = start // 8, math.ceil((start + bits) / 8)
    if len(value) < end:
        raise FrameCodecError(
            f"the Pixel Data value holds {len(value)} bytes, too few for frame index {index} "
            f"({end} bytes needed)"
        )
    if start % 8 == 0 and bits % 8 == 0:
        return bytes(value[first:end])
    chunk = np.frombuffer(value, dtype=np.uint8, count=end - first, offset=first)
    bits_array = np.unpackbits(chunk, bitorder="little")[start % 8 : start % 8 + bits]
    return np.packbits(bits_array, bitorder="little").tobytes()
