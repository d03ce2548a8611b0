"""Structural checks on an untrusted PS3.10 file, made before pydicom parses it.

pydicom parses nested sequences recursively and inflates a deflated data set in one call, so
a few kilobytes can exhaust the interpreter's stack (200 nested sequences) or memory (a
deflated data set of a gigabyte of zeros). The functions here look at the bytes without
recursion and with bounded memory, and refuse such files before pydicom sees them:

* `read_file_meta` walks the File Meta Information (group 0002) and finds where the data
  set starts; a sequence or an undefined length in group 0002 is refused (none is defined).
* `check_nesting` walks the data set's element and item headers with an explicit stack,
  following pydicom's own reading rules (``filereader.data_element_generator``,
  ``read_sequence``, ``read_sequence_item``, ``_is_implicit_vr``), and refuses a data set
  whose sequences nest deeper than a limit. Where pydicom's choice of VR depends on context
  the walk does not track (private tags and the private dictionary), it assumes a sequence:
  a wrong guess costs only a walk over that value, never a missed level.
* `inflate` decompresses a Deflated Explicit VR Little Endian data set (PS3.5 Section A.5)
  in bounded chunks into a file, refusing it beyond a size cap.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import IO

from pydicom.datadict import dictionary_VR
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

__all__ = [
    "DEFAULT_MAX_INFLATED_BYTES",
    "DEFAULT_MAX_SEQUENCE_DEPTH",
    "FileMeta",
    "StructureError",
    "check_nesting",
    "inflate",
    "read_file_meta",
]

DEFAULT_MAX_SEQUENCE_DEPTH = 32
DEFAULT_MAX_INFLATED_BYTES = 256 * 1024**2

_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PREAMBLE_AND_PREFIX = 132
_CHUNK = 1 << 20

# pydicom.filereader.ENCODED_VR: the VRs data_element_generator recognises.
_ENCODED_VRS = frozenset(vr.encode("ascii") for vr in VR)
_LONG_VRS = frozenset(EXPLICIT_VR_LENGTH_32)


class StructureError(Exception):
    """The file is refused on structural grounds; `reason` explains why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FileMeta:
    """Where the File Meta Information ends and what it says about the encoding."""

    dataset_offset: int
    transfer_syntax_uid: str | None


def read_file_meta(fp: IO[bytes]) -> FileMeta:
    """Walk group 0002 after the preamble; `fp` is positioned anywhere.

    Elements are read the way pydicom reads them: in implicit VR throughout when the first
    element's VR bytes are not two capital letters (``_is_implicit_vr``), else in explicit VR,
    falling back to implicit VR for an element whose VR bytes are outside "AA".."ZZ". A
    sequence or an undefined length in the File Meta Information is refused: pydicom would
    parse it recursively, and PS3.10 defines no such element; so is an unknown VR, for which
    pydicom reads the group again in implicit VR, finding another end.
    """
    size = fp.seek(0, 2)
    position = _PREAMBLE_AND_PREFIX
    transfer_syntax: str | None = None
    fp.seek(position)
    first = fp.read(6)
    implicit = len(first) == 6 and not (0x40 < first[4] < 0x5B and 0x40 < first[5] < 0x5B)
    while True:
        fp.seek(position)
        header = fp.read(8)
        if len(header) < 8:
            break
        group, element, vr, short_length = struct.unpack("<HH2sH", header)
        if group != 0x0002:
            break
        if implicit or (vr not in _ENCODED_VRS and not b"AA" <= vr <= b"ZZ"):
            (length,) = struct.unpack("<L", header[4:])
            start = position + 8
            vr = b""
        elif vr in _ENCODED_VRS:
            if vr.decode("ascii") in _LONG_VRS:
                extra = fp.read(4)
                if len(extra) < 4:
                    raise StructureError("the File Meta Information is truncated")
                (length,) = struct.unpack("<L", extra)
                start = position + 12
            else:
                length, start = short_length, position + 8
        else:
            raise StructureError(
                f"File Meta Information element (0002,{element:04X}) has an unknown VR"
            )
        if length == _UNDEFINED or vr == b"SQ":
            raise StructureError(
                f"File Meta Information element (0002,{element:04X}) is a sequence or has "
                "an undefined length"
            )
        if element == 0x0010 and length <= 1024:
            fp.seek(start)
            transfer_syntax = fp.read(length).decode("latin-1").rstrip("\x00 ")
        position = min(start + length, size)  # pydicom reads the value: at most to the end
    return FileMeta(position, transfer_syntax)


@dataclass(slots=True)
class _Frame:
    """One level of the walk: a data set (elements) or a sequence (items).

    ``end``: the defined length ends the level once the position reaches it (``None``:
    only a delimiter or the end of the stream does). ``limit``: the end of the stream the
    level is read from, the file or, for a defined-length sequence that pydicom converts
    from its value bytes, that value. ``after``: where the enclosing data set resumes once a
    defined-length sequence is done (its value's end), ``None`` for an undefined length.
    """

    sequence: bool
    end: int | None
    limit: int
    implicit: bool
    after: int | None = None


class _Reader:
    __slots__ = ("fp",)

    def __init__(self, fp: IO[bytes]) -> None:
        self.fp = fp

    def read(self, position: int, size: int, limit: int) -> bytes:
        size = min(size, limit - position)
        if size <= 0:
            return b""
        self.fp.seek(position)
        return self.fp.read(size)

    def find(self, pattern: bytes, position: int, limit: int) -> int:
        """Offset of the first `pattern` in ``[position, limit)``, or -1."""
        overlap = len(pattern) - 1
        while position < limit:
            chunk = self.read(position, _CHUNK, limit)
            if not chunk:
                return -1
            index = chunk.find(pattern)
            if index >= 0:
                return position + index
            if len(chunk) <= overlap:
                return -1
            position += len(chunk) - overlap
        return -1


def check_nesting(
    fp: IO[bytes],
    start: int,
    size: int,
    *,
    implicit: bool,
    little: bool,
    max_depth: int,
    command_set: bool = True,
) -> None:
    """Refuse a data set whose sequences nest deeper than `max_depth`.

    Parameters
    ----------
    fp : binary file
        Seekable; read from `start` to `size`.
    start, size : int
        Where the data set (after the File Meta Information) starts, and the stream's end.
    implicit, little : bool
        The encoding the transfer syntax gives the data set.
    max_depth : int
        Most sequences one element may be nested in (a top-level sequence is depth 1).
    command_set : bool
        Read a Command Set (group 0000) first, in implicit VR little endian, as pydicom's
        ``dcmread`` does.

    Raises
    ------
    StructureError
        When the nesting is too deep. Malformed structure is not an error here: the walk
        stops where pydicom would fail, and pydicom's own error is reported instead.
    """
    reader = _Reader(fp)
    position: int | None = start
    if command_set:
        position = _walk(reader, start, size, True, True, max_depth, command_set=True)
    if position is not None:
        _walk(reader, position, size, implicit, little, max_depth, command_set=False)


def _walk(
    reader: _Reader,
    start: int,
    size: int,
    implicit: bool,
    little: bool,
    max_depth: int,
    *,
    command_set: bool,
) -> int | None:
    """Walk one top-level data set; where pydicom's reading of it stops, ``None`` when
    pydicom would raise. A command set stops before the first element not in group 0000."""
    end = "<" if little else ">"
    explicit_header = struct.Struct(f"{end}HH2sH")
    implicit_header = struct.Struct(f"{end}HHL")
    long_length = struct.Struct(f"{end}L")
    tag_struct = struct.Struct(f"{end}HH")
    item_tag = tag_struct.pack(0xFFFE, 0xE000)
    delimiter_tag = tag_struct.pack(0xFFFE, 0xE0DD)

    def data_set_is_implicit(position: int, limit: int, assumed: bool, in_sequence: bool) -> bool:
        # pydicom.filereader._is_implicit_vr: a data set's first VR decides its encoding.
        if in_sequence and assumed:
            return True
        head = reader.read(position, 6, limit)
        if len(head) < 6:
            return assumed
        return not (0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B)

    position = start
    stack = [_Frame(False, None, size, data_set_is_implicit(start, size, implicit, False))]
    depth = 0

    def unwind() -> bool:
        """After an error pydicom raises: resume after the innermost defined-length sequence
        (pydicom converts those one by one, so the error stays inside it); ``False`` when
        the error would end pydicom's whole read."""
        nonlocal position, depth
        for index in range(len(stack) - 1, -1, -1):
            frame = stack[index]
            if frame.sequence and frame.after is not None:
                depth -= sum(1 for inner in stack[index:] if inner.sequence)
                del stack[index:]
                position = frame.after
                return True
        return False

    while stack:
        frame = stack[-1]
        if frame.sequence:
            if frame.end is not None and position >= frame.end:
                stack.pop()
                depth -= 1
                if frame.after is not None:
                    position = frame.after
                continue
            header = reader.read(position, 8, frame.limit)
            if len(header) < 8:  # read_sequence_item raises OSError
                if unwind():
                    continue
                return None
            group, element, length = implicit_header.unpack(header)
            position += 8
            if group << 16 | element == _SEQUENCE_DELIMITER:
                stack.pop()
                depth -= 1
                if frame.after is not None:
                    position = frame.after
                continue
            # Any other header starts an item, whatever its tag (pydicom only logs it).
            stack.append(
                _Frame(
                    False,
                    None if length == _UNDEFINED else position + length,
                    frame.limit,
                    data_set_is_implicit(position, frame.limit, frame.implicit, True),
                )
            )
            continue

        # A data set: read one element header.
        if frame.end is not None and position >= frame.end:
            stack.pop()
            continue
        header = reader.read(position, 8, frame.limit)
        if len(header) < 8:  # end of the stream: the data set ends quietly
            position += len(header)
            stack.pop()
            continue
        vr: str | None
        if frame.implicit:
            group, element, length = implicit_header.unpack(header)
            vr, value = None, position + 8
        else:
            group, element, raw_vr, length = explicit_header.unpack(header)
            if raw_vr in _ENCODED_VRS:
                vr = raw_vr.decode("ascii")
                value = position + 8
                if vr in _LONG_VRS:
                    extra = reader.read(value, 4, frame.limit)
                    if len(extra) < 4:  # struct.error in pydicom
                        if unwind():
                            continue
                        return None
                    (length,) = long_length.unpack(extra)
                    value += 4
            elif not b"AA" <= raw_vr <= b"ZZ":  # pydicom switches to implicit VR
                group, element, length = implicit_header.unpack(header)
                vr, value = None, position + 8
            else:  # an unknown VR, read with a 2-byte length
                vr, value = raw_vr.decode("latin-1"), position + 8
        tag = group << 16 | element
        if tag == _ITEM_DELIMITER:
            position = value
            stack.pop()
            continue
        if command_set and len(stack) == 1 and group != 0x0000:
            return position  # pydicom's stop_when: the command set ends before this element

        if length != _UNDEFINED:
            if _may_be_sequence(tag, vr):
                depth += 1
                if depth > max_depth:
                    raise _too_deep(max_depth)
                value_end = value + length
                stack.append(
                    _Frame(True, value_end, min(value_end, frame.limit), frame.implicit, value_end)
                )
                position = value
            else:
                position = value + length
            continue

        # Undefined length: a sequence, or a value that runs to a Sequence Delimitation Item.
        is_sequence = vr in ("SQ", "UN")
        if vr is None:
            try:
                is_sequence = dictionary_VR(tag) == "SQ"
            except KeyError:
                look = reader.read(value, 4, frame.limit)
                if len(look) < 4:  # struct.error in pydicom
                    if unwind():
                        continue
                    return None
                is_sequence = look == item_tag
        if is_sequence:
            depth += 1
            if depth > max_depth:
                raise _too_deep(max_depth)
            position = value
            stack.append(_Frame(True, None, frame.limit, frame.implicit))
            continue
        after = _skip_undefined_value(reader, value, frame.limit, item_tag, delimiter_tag, end)
        if after is None:  # EOFError: pydicom ends this data set, rewound to the value
            position = value
            stack.pop()
            continue
        position = after
    return position


def _may_be_sequence(tag: int, vr: str | None) -> bool:
    """Whether pydicom may convert a defined-length value as a sequence."""
    if vr == "SQ":
        return True
    if vr is not None and vr != "UN":
        return False
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        # A private tag's VR comes from pydicom's private dictionary, chosen by the private
        # creator: assume a sequence (private creators themselves are LO).
        return bool(tag >> 16 & 1) and tag & 0xFF00 != 0


def _skip_undefined_value(
    reader: _Reader,
    value: int,
    limit: int,
    item_tag: bytes,
    delimiter_tag: bytes,
    end: str,
) -> int | None:
    """pydicom's ``read_undefined_length_value``: where reading resumes, ``None`` for EOF.

    First as encapsulated Pixel Data (items up to a Sequence Delimitation Item), else by
    searching the bytes for the delimiter tag.
    """
    position = value
    while True:
        tag = reader.read(position, 4, limit)
        if len(tag) < 4:
            break
        if tag == delimiter_tag:
            return position + 8
        if tag != item_tag:
            break
        length_bytes = reader.read(position + 4, 4, limit)
        if len(length_bytes) < 4:
            break
        (length,) = struct.unpack(f"{end}L", length_bytes)
        position += 8 + length
    found = reader.find(delimiter_tag, value, limit)
    return None if found < 0 else found + 8


def _too_deep(max_depth: int) -> StructureError:
    return StructureError(
        f"sequences are nested more than {max_depth} levels deep (DICOMWEB_MAX_SEQUENCE_DEPTH)"
    )


def inflate(source: IO[bytes], target: IO[bytes] | None, max_bytes: int) -> int:
    """Inflate the raw deflate stream (RFC 1951) read from `source` into `target`.

    Memory stays bounded by the chunk size whatever the ratio. With `target` ``None`` the
    stream is only measured, so a bomb can be refused before anything is written. Returns
    the inflated size.

    Raises
    ------
    StructureError
        Beyond `max_bytes` inflated bytes, or when the stream is corrupt or truncated.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof:
            pending = source.read(_CHUNK)
            if not pending:
                raise StructureError("the deflated data set is truncated")
            while pending and not inflater.eof:
                data = inflater.decompress(pending, _CHUNK)
                total += len(data)
                if total > max_bytes:
                    raise StructureError(
                        f"the deflated data set inflates to more than {max_bytes} bytes "
                        "(DICOMWEB_MAX_INFLATED_BYTES)"
                    )
                if target is not None:
                    target.write(data)
                pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise StructureError(f"the deflated data set is corrupt: {exc}") from exc
    return total
