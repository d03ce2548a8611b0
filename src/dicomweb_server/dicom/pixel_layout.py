"""Where every frame of an instance's Pixel Data lies in the stored file.

WADO-RS frame retrieval (PS3.18 Section 10.4.1.1.3, ``.../frames/{list}``) must answer without
parsing the instance again, so at store time we record the byte ranges of each frame:

* native Pixel Data (PS3.5 Section 8.1.1) is one value whose frames follow each other with no
  padding, so a frame is ``frame_length`` bytes at ``value_offset + index * frame_length``;
* encapsulated Pixel Data (PS3.5 Section A.4) is a sequence of items: a Basic Offset Table
  item followed by fragments, a frame being one or more consecutive fragments. Which
  fragments form which frame comes from the Extended Offset Table (PS3.3 Section
  C.7.6.3.1.8), else the Basic Offset Table (PS3.5 Table A.4-1), else from the fragment count
  and the codestream start markers.

Scanning reads the 8-byte item headers (plus the first 12 bytes of a fragment when looking for
start markers) and seeks over everything else, so a multi-GB object costs a few kilobytes of
reads.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

__all__ = [
    "PIXEL_DATA_TAGS",
    "VIDEO_TRANSFER_SYNTAXES",
    "EncapsulatedItems",
    "MalformedPixelDataError",
    "PixelDataError",
    "PixelLayout",
    "encapsulated_layout",
    "native_layout",
    "scan_encapsulated",
]

#: (7FE0,0010) Pixel Data, (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data.
PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})

#: PS3.5 Sections 8.2.5 to 8.2.8: MPEG-2, MPEG-4 AVC/H.264 and HEVC/H.265 carry all frames as
#: one bitstream split into fragments at arbitrary points, so single frames are not
#: addressable; the layout then holds one "frame", the whole stream (the true count stays in
#: the metadata's Number of Frames).
VIDEO_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.100",
        "1.2.840.10008.1.2.4.100.1",
        "1.2.840.10008.1.2.4.101",
        "1.2.840.10008.1.2.4.101.1",
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.102.1",
        "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.103.1",
        "1.2.840.10008.1.2.4.104",
        "1.2.840.10008.1.2.4.104.1",
        "1.2.840.10008.1.2.4.105",
        "1.2.840.10008.1.2.4.105.1",
        "1.2.840.10008.1.2.4.106",
        "1.2.840.10008.1.2.4.106.1",
        "1.2.840.10008.1.2.4.107",
        "1.2.840.10008.1.2.4.108",
    }
)

_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF

# First bytes of a frame's codestream, used to find frame boundaries when neither offset
# table is usable: JPEG and JPEG-LS SOI followed by a marker (ISO/IEC 10918-1 B.2.1, 14495-1
# C.1; the entropy-coded data of both can never contain FFD8), JPEG 2000 / HTJ2K SOC + SIZ
# (ISO/IEC 15444-1 A.4.1), the JP2 signature box (15444-1 I.5.1), JPEG XL codestream and
# container signatures (ISO/IEC 18181-1, 18181-2).
_FRAME_START_MARKERS = (
    b"\xff\xd8\xff",
    b"\xff\x4f\xff\x51",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",
    b"\xff\x0a",
    b"\x00\x00\x00\x0cJXL \r\n\x87\n",
)
_MARKER_PROBE = max(len(marker) for marker in _FRAME_START_MARKERS)


class PixelDataError(ValueError):
    """The Pixel Data contradicts the attributes that describe it (too short, wrong frames)."""


class MalformedPixelDataError(PixelDataError):
    """The encapsulated item structure is broken or truncated (PS3.5 Section A.4)."""


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """Byte ranges of every frame of the Pixel Data in the stored file.

    Attributes
    ----------
    tag : int
        ``0x7FE00010``, ``0x7FE00008`` or ``0x7FE00009``.
    encapsulated : bool
        Whether the value is an encapsulated item sequence (PS3.5 Section A.4).
    number_of_frames : int
        (0028,0008) Number of Frames, 1 when absent; always ``len(fragments)`` when
        encapsulated, so 1 for video, whose frames are not separately addressable.
    value_offset : int
        File offset of the value; for encapsulated data, of the Basic Offset Table item tag.
    value_length : int
        Bytes of the value, up to but excluding the Sequence Delimitation Item when
        encapsulated (the same bytes pydicom exposes as the element value).
    frame_length : int
        Native: bytes per frame, or 0 when frames are not byte-aligned (1-bit pixels whose
        per-frame bit count is not a multiple of 8, PS3.5 Section 8.1.1). Encapsulated: 0.
    fragments : tuple of tuple of (int, int)
        Encapsulated only: for each frame, its fragments as ``(offset, length)`` of the
        fragment *value* in the file. Empty for native data. For video transfer syntaxes
        (`VIDEO_TRANSFER_SYNTAXES`) there is a single entry: the whole bitstream.
    """

    tag: int
    encapsulated: bool
    number_of_frames: int
    value_offset: int
    value_length: int
    frame_length: int
    fragments: tuple[tuple[tuple[int, int], ...], ...]

    def frame_ranges(self, index: int) -> tuple[tuple[int, int], ...]:
        """Return the ``(offset, length)`` byte ranges in the file that make up one frame.

        Parameters
        ----------
        index : int
            0-based frame index (WADO-RS frame numbers are 1-based, PS3.18 Section 8.3.3.2).

        Returns
        -------
        tuple of (int, int)
            Ranges to read and concatenate. Native data gives one range; when frames are not
            byte-aligned (``frame_length == 0``) that range is the whole value and the caller
            must extract the frame's bits using Rows, Columns and Samples per Pixel.

        Raises
        ------
        IndexError
            If `index` is negative or not below `number_of_frames`.
        """
        if not 0 <= index < self.number_of_frames:
            raise IndexError(f"frame index {index} out of range 0..{self.number_of_frames - 1}")
        if self.encapsulated:
            return self.fragments[index]
        if self.frame_length == 0:
            return ((self.value_offset, self.value_length),)
        return ((self.value_offset + index * self.frame_length, self.frame_length),)

    def to_json(self) -> dict[str, object]:
        """Return a compact JSON-serialisable form for the index database.

        Each frame's fragments are flattened to ``[offset, length, offset, length, ...]``.
        """
        return {
            "tag": self.tag,
            "encapsulated": self.encapsulated,
            "frames": self.number_of_frames,
            "offset": self.value_offset,
            "length": self.value_length,
            "frame_length": self.frame_length,
            "fragments": [[n for pair in frame for n in pair] for frame in self.fragments],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> PixelLayout:
        """Rebuild a layout from `to_json` output.

        Raises
        ------
        ValueError
            If `data` is not a well-formed `to_json` mapping.
        """
        fragments: list[tuple[tuple[int, int], ...]] = []
        for frame in _list(data, "fragments"):
            if not isinstance(frame, list) or len(frame) % 2:
                raise ValueError("pixel layout: malformed 'fragments'")
            numbers = [_int(n, "fragments") for n in frame]
            fragments.append(tuple(zip(numbers[0::2], numbers[1::2], strict=True)))
        encapsulated = data.get("encapsulated")
        if not isinstance(encapsulated, bool):
            raise ValueError("pixel layout: 'encapsulated' must be a boolean")
        return cls(
            tag=_int(data.get("tag"), "tag"),
            encapsulated=encapsulated,
            number_of_frames=_int(data.get("frames"), "frames"),
            value_offset=_int(data.get("offset"), "offset"),
            value_length=_int(data.get("length"), "length"),
            frame_length=_int(data.get("frame_length"), "frame_length"),
            fragments=tuple(fragments),
        )


def _int(value: object, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"pixel layout: {key!r} must be an integer")
    return value


def _list(data: Mapping[str, object], key: str) -> list[object]:
    value = data.get(key)
    if not isinstance(value, list):
        raise ValueError(f"pixel layout: {key!r} must be a list")
    return value


def native_layout(
    *,
    tag: int,
    value_offset: int,
    value_length: int,
    rows: int,
    columns: int,
    samples_per_pixel: int,
    bits_allocated: int,
    number_of_frames: int,
    photometric_interpretation: str = "",
) -> PixelLayout:
    """Describe native (uncompressed) Pixel Data and check that it is long enough.

    Frames are concatenated without padding (PS3.5 Section 8.1.1 and Annex D); a value may
    carry one trailing pad byte to reach even length (PS3.5 Section 7.1.1), so only a
    *short* value is refused.

    Raises
    ------
    PixelDataError
        If an image attribute is not positive or the value is shorter than the frames.
    """
    for name, number in (
        ("Rows", rows),
        ("Columns", columns),
        ("Samples per Pixel", samples_per_pixel),
        ("Bits Allocated", bits_allocated),
        ("Number of Frames", number_of_frames),
    ):
        if number <= 0:
            raise PixelDataError(f"{name} must be positive, got {number}")
    frame_bits = rows * columns * samples_per_pixel * bits_allocated
    if frame_bits % 8:
        frame_length = 0
        expected = (frame_bits * number_of_frames + 7) // 8
    else:
        frame_length = frame_bits // 8
        if photometric_interpretation == "YBR_FULL_422":
            # PS3.3 C.7.6.3.1.2: native YBR_FULL_422 stores two chroma samples per two pixels.
            frame_length = frame_length // 3 * 2
        expected = frame_length * number_of_frames
    if value_length < expected:
        raise PixelDataError(
            f"Pixel Data holds {value_length} bytes but {number_of_frames} frame(s) of "
            f"{rows}x{columns}x{samples_per_pixel} at {bits_allocated} bits need {expected}"
        )
    return PixelLayout(
        tag=tag,
        encapsulated=False,
        number_of_frames=number_of_frames,
        value_offset=value_offset,
        value_length=value_length,
        frame_length=frame_length,
        fragments=(),
    )


@dataclass(frozen=True, slots=True)
class EncapsulatedItems:
    """The item structure of an encapsulated value (PS3.5 Section A.4).

    Attributes
    ----------
    basic_offsets : tuple of int
        Basic Offset Table entries, relative to `origin`.
    origin : int
        File offset of the first fragment's item tag: the zero point of both offset tables.
    fragments : tuple of (int, int)
        Every fragment as ``(offset of its value in the file, value length)``.
    value_length : int
        Bytes from the Basic Offset Table item tag to the Sequence Delimitation Item tag.
    """

    basic_offsets: tuple[int, ...]
    origin: int
    fragments: tuple[tuple[int, int], ...]
    value_length: int


def _read_exact(fp: BinaryIO, offset: int, size: int) -> bytes:
    fp.seek(offset)
    data = fp.read(size)
    if len(data) != size:
        raise MalformedPixelDataError(f"encapsulated Pixel Data truncated at byte {offset}")
    return data


def scan_encapsulated(
    fp: BinaryIO, value_offset: int, *, little_endian: bool = True
) -> EncapsulatedItems:
    """Walk the items of an encapsulated value by reading headers and seeking over values.

    Parameters
    ----------
    fp : BinaryIO
        The stored file, seekable. An unbuffered file (``buffering=0``) makes each header a
        single 8-byte read instead of a buffer fill.
    value_offset : int
        File offset of the first item tag (the Basic Offset Table item).
    little_endian : bool
        Byte order of the item headers; encapsulated transfer syntaxes are little endian.

    Raises
    ------
    MalformedPixelDataError
        If an item is not an Item or Sequence Delimitation Item, has undefined length, the
        Basic Offset Table length is not a multiple of 4, or the data ends early.
    """
    header = struct.Struct("<HHL" if little_endian else ">HHL")
    size = fp.seek(0, os.SEEK_END)

    def read_header(offset: int) -> tuple[int, int]:
        group, element, length = header.unpack(_read_exact(fp, offset, 8))
        return group << 16 | element, length

    tag, bot_length = read_header(value_offset)
    if tag != _ITEM or bot_length == _UNDEFINED_LENGTH or bot_length % 4:
        raise MalformedPixelDataError(
            "encapsulated Pixel Data must start with a Basic Offset Table item "
            "whose length is a multiple of 4"
        )
    count = bot_length // 4
    basic_offsets: tuple[int, ...] = ()
    if count:
        order = "<" if little_endian else ">"
        basic_offsets = struct.unpack(
            f"{order}{count}L", _read_exact(fp, value_offset + 8, bot_length)
        )
    origin = position = value_offset + 8 + bot_length
    fragments: list[tuple[int, int]] = []
    while True:
        tag, length = read_header(position)
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM or length == _UNDEFINED_LENGTH:
            raise MalformedPixelDataError(
                f"unexpected tag {tag:08X} or undefined length in encapsulated Pixel Data "
                f"at byte {position}"
            )
        fragments.append((position + 8, length))
        position += 8 + length
        if position > size:
            raise MalformedPixelDataError("encapsulated Pixel Data fragment runs past the file")
    return EncapsulatedItems(
        basic_offsets=basic_offsets,
        origin=origin,
        fragments=tuple(fragments),
        value_length=position - value_offset,
    )


def encapsulated_layout(
    fp: BinaryIO,
    *,
    tag: int,
    value_offset: int,
    number_of_frames: int,
    transfer_syntax_uid: str = "",
    extended_offsets: tuple[Sequence[int], Sequence[int]] | None = None,
    little_endian: bool = True,
) -> PixelLayout:
    """Scan encapsulated Pixel Data and assign its fragments to frames.

    The sources are tried in the order of trust: the Extended Offset Table (PS3.3 Section
    C.7.6.3.1.8, one fragment per frame, lengths may exclude the fragment's pad byte), a
    non-empty Basic Offset Table (PS3.5 Table A.4-1), then - both empty - all fragments for a
    single frame, one fragment per frame when the counts agree, and finally codestream start
    markers, which is how ``pydicom.encaps.generate_frames`` copes with an empty table. A
    table that disagrees with the items (wrong count, an offset that is not an item start)
    is ignored rather than trusted.

    Raises
    ------
    MalformedPixelDataError
        If the item structure is broken (see `scan_encapsulated`).
    PixelDataError
        If there are no fragments, or the frames cannot be matched to Number of Frames.
    """
    if number_of_frames <= 0:
        raise PixelDataError(f"Number of Frames must be positive, got {number_of_frames}")
    items = scan_encapsulated(fp, value_offset, little_endian=little_endian)
    fragments = items.fragments
    if not fragments:
        raise PixelDataError("encapsulated Pixel Data has no fragments")

    frames: tuple[tuple[tuple[int, int], ...], ...] | None = None
    if transfer_syntax_uid in VIDEO_TRANSFER_SYNTAXES:
        frames = (fragments,)
    if frames is None and extended_offsets is not None:
        frames = _frames_from_extended_offsets(items, number_of_frames, *extended_offsets)
    if frames is None and items.basic_offsets:
        frames = _frames_from_basic_offsets(items, number_of_frames)
    if frames is None:
        frames = _frames_without_table(fp, fragments, number_of_frames)
    return PixelLayout(
        tag=tag,
        encapsulated=True,
        number_of_frames=len(frames),
        value_offset=value_offset,
        value_length=items.value_length,
        frame_length=0,
        fragments=frames,
    )


def _fragment_index(items: EncapsulatedItems) -> dict[int, int]:
    """Map each fragment's item-tag offset, relative to the table origin, to its index."""
    return {offset - 8 - items.origin: index for index, (offset, _) in enumerate(items.fragments)}


def _frames_from_extended_offsets(
    items: EncapsulatedItems,
    number_of_frames: int,
    offsets: Sequence[int],
    lengths: Sequence[int],
) -> tuple[tuple[tuple[int, int], ...], ...] | None:
    if len(offsets) != number_of_frames or len(lengths) != number_of_frames:
        return None
    starts = _fragment_index(items)
    frames: list[tuple[tuple[int, int], ...]] = []
    for offset, length in zip(offsets, lengths, strict=True):
        index = starts.get(offset)
        if index is None:
            return None
        value_offset, value_length = items.fragments[index]
        if length > value_length:
            return None
        frames.append(((value_offset, length),))
    return tuple(frames)


def _frames_from_basic_offsets(
    items: EncapsulatedItems, number_of_frames: int
) -> tuple[tuple[tuple[int, int], ...], ...] | None:
    offsets = items.basic_offsets
    if len(offsets) != number_of_frames or offsets[0] != 0:
        return None
    starts = _fragment_index(items)
    boundaries: list[int] = []
    for offset in offsets:
        index = starts.get(offset)
        if index is None or (boundaries and index <= boundaries[-1]):
            return None
        boundaries.append(index)
    boundaries.append(len(items.fragments))
    return tuple(items.fragments[start:stop] for start, stop in itertools.pairwise(boundaries))


def _frames_without_table(
    fp: BinaryIO, fragments: tuple[tuple[int, int], ...], number_of_frames: int
) -> tuple[tuple[tuple[int, int], ...], ...]:
    if number_of_frames == 1:
        return (fragments,)
    if len(fragments) == number_of_frames:
        return tuple((fragment,) for fragment in fragments)
    if len(fragments) < number_of_frames:
        raise PixelDataError(
            f"{len(fragments)} fragment(s) cannot hold {number_of_frames} frames "
            "and there is no offset table"
        )
    frames: list[list[tuple[int, int]]] = []
    for offset, length in fragments:
        head = _read_exact(fp, offset, min(length, _MARKER_PROBE))
        if not frames or head.startswith(_FRAME_START_MARKERS):
            frames.append([])
        frames[-1].append((offset, length))
    if len(frames) != number_of_frames:
        raise PixelDataError(
            f"found {len(frames)} codestream start(s) in {len(fragments)} fragments "
            f"but Number of Frames is {number_of_frames}"
        )
    return tuple(tuple(frame) for frame in frames)
