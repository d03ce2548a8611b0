"""The DICOM JSON model (PS3.18 Annex F) built straight from raw element bytes.

Every metadata read (WADO-RS ``/metadata``, QIDO-RS ``includefield=all``) serves JSON that was
produced once, at store time, by `dataset_to_json`. pydicom's ``Dataset.to_json_dict`` first
turns every element into a ``DataElement`` (``DSfloat``, ``PersonName``, ``MultiValue``
objects...) and then back into JSON; here the bytes of a ``RawDataElement`` are decoded
directly (``struct`` for binary numbers, one ``bytes.decode`` and ``str.split`` for strings),
which is several times faster. Anything unusual - implicit VR ambiguity, VR UN, sequences,
non-ASCII text in ISO 2022 character sets, malformed numbers - is delegated to pydicom's own
conversion so the output stays identical to ``to_json_dict`` apart from the deliberate
differences below.

Deliberate differences from pydicom 3.0 ``to_json_dict``, each required by PS3.18:

* Group Length (gggg,0000) attributes are omitted (F.2.2), as is group 0002.
* Pixel Data (7FE0,0010/0008/0009) is always a BulkDataURI, even when small: frames are served
  from the stored file, never from the metadata.
* ``bulk_data_threshold`` is compared with the value length in bytes; pydicom compares
  ``(threshold // 4) * 3`` (the base64 size). pydicom's 1024 is our 768.
* Empty values inside a multi-valued attribute are ``null`` (F.2.5); pydicom writes ``""``
  for strings and fails for IS/DS/PN.
* Empty person-name groups are omitted (F.2.2, "the non-empty name components"); pydicom
  writes ``"Alphabetic": ""`` when only the ideographic or phonetic group is present.
* A sequence with no items has no ``"Value"`` (F.2.5, the attribute is empty); pydicom writes
  ``"Value": []``.
* An IS or DS value that is not a finite number of the right kind (``"1A"``, ``"1.5"`` for
  IS, ``"NaN"``) is kept as the original JSON string, which Table F.2.3-1's note on IS/DS
  allows; pydicom raises, or truncates ``"1.5"`` to ``1``.

The output assumes pydicom's default ``config`` (no ``use_DS_numpy``, ``datetime_conversion``
or ``data_element_callback``), which this package never changes.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom.charset import decode_bytes, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.hooks import hooks
from pydicom.valuerep import AMBIGUOUS_VR, TEXT_VR_DELIMS, PersonName
from pydicom.values import convert_PN

from .pixel_layout import PIXEL_DATA_TAGS, PixelDataError, scan_encapsulated

__all__ = ["BULK_DATA_VRS", "BulkValue", "dataset_to_json"]

#: VRs that are written as InlineBinary or BulkDataURI (PS3.18 F.2.7). F.2.6 also lets a
#: server move long numeric and text values (DS, FL, LT, UT...) to bulk data; we keep those
#: inline as "Value" because QIDO-RS and viewer clients read them from the metadata.
BULK_DATA_VRS: frozenset[str] = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

# pydicom's element-level binary test: BYTES_VR | AMBIGUOUS_VR - {"US or SS"}.
_ELEMENT_BINARY_VRS = BULK_DATA_VRS | (frozenset(AMBIGUOUS_VR) - {"US or SS"})

# PS3.3 C.11.1.1.1: the first LUT Descriptor value is always unsigned; pydicom adjusts it, so
# these go through pydicom (same tags as pydicom.tag._LUT_DESCRIPTOR_TAGS).
_LUT_DESCRIPTOR_TAGS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})

# Resolved VRs that are always converted by pydicom: sequences (nested datasets), UN (pydicom
# may reinterpret it with the dictionary VR) and the ambiguous "X or Y" VRs.
_DELEGATED_VRS = frozenset({"SQ", "UN"}) | frozenset(AMBIGUOUS_VR)

_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ESC = 0x1B

Values = list[Any] | None
_RawConverter = Callable[[bytes, bool, list[str]], Values]


@dataclass(frozen=True, slots=True)
class BulkValue:
    """Where one bulk data value lies in the stored file.

    Attributes
    ----------
    path : str
        Location of the element: ``"7FE00010"`` at top level, ``"00540016/0/00181072"``
        nested (sequence tag / 0-based item / tag), as handed to ``bulk_uri``.
    tag : int
        The element tag.
    vr : str
        The element VR, as written in the JSON.
    offset : int
        Byte offset of the value in the file (for encapsulated data, of its first item tag),
        or -1 when the element was not read from a file.
    length : int
        Value length in bytes (for encapsulated data, up to the Sequence Delimitation Item).
    """

    path: str
    tag: int
    vr: str
    offset: int
    length: int


def dataset_to_json(
    ds: Dataset,
    *,
    bulk_data_threshold: int,
    bulk_uri: Callable[[str], str],
    bulk_sink: Callable[[BulkValue], None] | None = None,
) -> dict[str, Any]:
    """Return the DICOM JSON model (PS3.18 Annex F.2) of `ds`.

    Parameters
    ----------
    ds : pydicom.Dataset
        Best read with ``dcmread(..., defer_size=N)`` and not yet accessed: raw, deferred
        elements are converted from their bytes, and binary values bigger than the threshold
        are never loaded. The file (or buffer) must still exist for values that were deferred
        but must be inlined.
    bulk_data_threshold : int
        Binary values (`BULK_DATA_VRS`) longer than this many bytes become a BulkDataURI
        (F.2.6), shorter ones InlineBinary (F.2.7). Pixel Data is always a BulkDataURI.
    bulk_uri : callable
        Maps an element path (see `BulkValue.path`) to the BulkDataURI string.
    bulk_sink : callable, optional
        Receives a `BulkValue` for every BulkDataURI written.

    Returns
    -------
    dict
        Keys are 8-digit upper-case hexadecimal tags in ascending order; see the module
        docstring for the deliberate differences from pydicom's ``to_json_dict``.
    """
    converter = _Converter(bulk_data_threshold, bulk_uri, bulk_sink)
    return converter.dataset(ds, "", 0)


def _encodings(ds: Dataset) -> list[str]:
    # The character set pydicom's Dataset.__getitem__ decodes with: the one in force when the
    # dataset was read (inherited by sequence items, PS3.5 Section 7.5.3), else the current.
    charset = ds.original_character_set or ds._character_set
    if isinstance(charset, str):
        return [charset] if charset else [default_encoding]
    return list(charset) or [default_encoding]


class _Converter:
    """One conversion: the threshold, the URI builder and the sink, shared by all levels."""

    __slots__ = ("bulk_uri", "sink", "threshold")

    def __init__(
        self,
        threshold: int,
        bulk_uri: Callable[[str], str],
        sink: Callable[[BulkValue], None] | None,
    ) -> None:
        self.threshold = threshold
        self.bulk_uri = bulk_uri
        self.sink = sink

    def dataset(self, ds: Dataset, prefix: str, base: int | None) -> dict[str, Any]:
        """Convert one dataset; `base` is the file offset its value_tells are relative to.

        pydicom records ``value_tell`` relative to the stream an element was read from: the
        file for top-level elements and undefined-length sequences, but a buffer holding
        just the value for defined-length sequences (``values.convert_SQ``). `base` carries
        the file offset of that stream's start (``None``: not read from a file).
        """
        encodings = _encodings(ds)
        # Dataset._dict holds the elements as read (RawDataElement until accessed). It is the
        # storage behind the public Dataset.get_item(tag, keep_deferred=True), read directly
        # because the per-call tag normalisation doubles the cost of a small header.
        elements = ds._dict
        out: dict[str, Any] = {}
        for tag in sorted(elements):
            if not tag & 0xFFFF or tag >> 16 == 0x0002:
                continue  # Group Length (PS3.18 F.2.2) and File Meta Information
            key = f"{tag:08X}"
            elem = elements[tag]
            if isinstance(elem, RawDataElement):
                out[key] = self.raw(ds, elem, prefix + key, base, encodings)
            else:
                out[key] = self.element(elem, prefix + key, base)
        return out

    def raw(
        self,
        ds: Dataset,
        raw: RawDataElement,
        path: str,
        base: int | None,
        encodings: list[str],
    ) -> dict[str, Any]:
        """Convert an element that pydicom has not converted yet, from its bytes if possible."""
        tag, vr, length, value, value_tell = raw[:5]
        if value is None and length:
            return self.deferred(ds, raw, path, base)
        if vr is None:
            try:
                vr = dictionary_VR(tag)
            except KeyError:  # private or unknown: pydicom's private dictionary or UN
                vr = _hook_vr(ds, raw, encodings)
        if vr in _DELEGATED_VRS or tag in _LUT_DESCRIPTOR_TAGS:
            return self.element(ds[tag], path, base)
        if not value:
            return {"vr": vr}
        if vr in BULK_DATA_VRS:
            offset = -1 if base is None else base + value_tell
            return self.binary(tag, vr, value, path, offset)
        convert = _RAW_CONVERTERS.get(vr)
        if convert is None:
            return self.element(ds[tag], path, base)
        try:
            values = convert(value, raw.is_little_endian, encodings)
        except (ValueError, UnicodeError, LookupError, struct.error):
            # Wrong length, undecodable text...: pydicom decides (and raises if it must).
            return self.element(ds[tag], path, base)
        return {"vr": vr, "Value": values} if values else {"vr": vr}

    def deferred(
        self, ds: Dataset, raw: RawDataElement, path: str, base: int | None
    ) -> dict[str, Any]:
        """Convert an element whose value pydicom skipped (longer than ``defer_size``).

        Bulk binary values are described without reading them; anything that must appear
        inline is read by pydicom (``Dataset.__getitem__`` loads deferred values).
        """
        vr = _resolve_deferred_vr(ds, raw)
        if vr in BULK_DATA_VRS:
            length = raw.length
            if length == _UNDEFINED_LENGTH:
                length = _undefined_value_length(ds, raw)
            if length >= 0 and (raw.tag in PIXEL_DATA_TAGS or length > self.threshold):
                offset = -1 if base is None else base + raw.value_tell
                return self.bulk(raw.tag, vr, path, offset, length)
        return self.element(ds[raw.tag], path, base)

    def bulk(self, tag: int, vr: str, path: str, offset: int, length: int) -> dict[str, Any]:
        """Emit a BulkDataURI (PS3.18 F.2.6) and report the value's location."""
        if self.sink is not None:
            self.sink(BulkValue(path, tag, vr, offset, length))
        return {"vr": vr, "BulkDataURI": self.bulk_uri(path)}

    def binary(self, tag: int, vr: str, value: bytes, path: str, offset: int) -> dict[str, Any]:
        """Emit a non-empty binary value as BulkDataURI or InlineBinary (PS3.18 F.2.7)."""
        if tag in PIXEL_DATA_TAGS or len(value) > self.threshold:
            return self.bulk(tag, vr, path, offset, len(value))
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}

    def element(self, elem: DataElement, path: str, base: int | None) -> dict[str, Any]:
        """Convert an element already converted by pydicom, mirroring ``to_json_dict``."""
        vr = elem.VR
        if vr == "SQ":
            items = elem.value
            if not items:
                return {"vr": vr}
            nested = base
            if base is not None and not elem.is_undefined_length:
                nested = None if elem.file_tell is None else base + elem.file_tell
            return {
                "vr": vr,
                "Value": [
                    self.dataset(item, f"{path}/{index}/", nested)
                    for index, item in enumerate(items)
                ],
            }
        if elem.is_empty:
            return {"vr": vr}
        if vr in _ELEMENT_BINARY_VRS:
            value = elem.value
            offset = -1 if base is None or elem.file_tell is None else base + elem.file_tell
            return self.binary(elem.tag, vr, bytes(value), path, offset)
        items = elem.value if elem.VM > 1 else [elem.value]
        values: list[Any]
        if vr == "PN":
            values = _pn_values(_pn_components(item) for item in items)
        elif vr == "AT":
            values = [f"{int(item):08X}" for item in items]
        else:
            convert = _ELEMENT_CONVERTERS.get(vr, _string_item)
            if len(items) == 1:
                values = [convert(items[0])]
            else:
                values = [None if item == "" else convert(item) for item in items]
        return {"vr": vr, "Value": values}


def _hook_vr(ds: Dataset, raw: RawDataElement, encodings: list[str]) -> str:
    """Look the VR up the way pydicom does (private dictionary, UN fall-backs)."""
    data: dict[str, Any] = {}
    hooks.raw_element_vr(raw, data, encoding=encodings, ds=ds, **hooks.raw_element_kwargs)
    vr: str = data["VR"]
    return vr


def _resolve_deferred_vr(ds: Dataset, raw: RawDataElement) -> str:
    """Return the VR pydicom would give a deferred element, without loading its value."""
    vr = raw.VR if raw.VR is not None and raw.VR != "UN" else _hook_vr(ds, raw, _encodings(ds))
    if vr in AMBIGUOUS_VR:
        # Same correction as Dataset.__getitem__, on an empty stand-in: for the binary
        # ambiguities (OB or OW, US or OW) it depends only on other elements.
        stand_in = DataElement(
            raw.tag,
            vr,
            b"",
            is_undefined_length=raw.length == _UNDEFINED_LENGTH,
            already_converted=True,
        )
        with suppress(AttributeError):
            vr = correct_ambiguous_vr_element(stand_in, ds, raw.is_little_endian).VR or vr
    return vr


def _undefined_value_length(ds: Dataset, raw: RawDataElement) -> int:
    """Measure a deferred encapsulated value by walking its item headers; -1 if impossible."""
    buffer = getattr(ds, "buffer", None)
    filename = getattr(ds, "filename", None)
    try:
        if buffer is not None and not getattr(buffer, "closed", False):
            position = buffer.tell()
            try:
                return _scan_length(buffer, raw)
            finally:
                buffer.seek(position)
        if isinstance(filename, str):
            with open(filename, "rb", buffering=0) as fp:
                return _scan_length(fp, raw)
    except (OSError, PixelDataError):
        pass
    return -1


def _scan_length(fp: BinaryIO, raw: RawDataElement) -> int:
    items = scan_encapsulated(fp, raw.value_tell, little_endian=raw.is_little_endian)
    return items.value_length


# --- raw bytes -> JSON values -------------------------------------------------------------


def _decode_text(value: bytes, encodings: list[str]) -> str:
    """Decode a SH/LO/UC/ST/LT/UT/PN value (PS3.5 Section 6.1.2.3).

    ASCII without ESC decodes identically under every Specific Character Set, so only
    other values go through pydicom's ISO 2022-aware ``decode_bytes``.
    """
    if value.isascii() and _ESC not in value:
        return value.decode("ascii")
    return decode_bytes(value, encodings, TEXT_VR_DELIMS)


def _string_values(parts: list[str]) -> Values:
    if len(parts) == 1:
        return parts if parts[0] else None
    return [part or None for part in parts]


def _default_repertoire(value: bytes, little: bool, encodings: list[str]) -> Values:
    # AS, CS, DA, DT, TM, UI: default repertoire, trailing SPACE / NUL padding (PS3.5 6.2).
    return _string_values(value.decode("latin-1").rstrip(" \x00").split("\\"))


def _ae(value: bytes, little: bool, encodings: list[str]) -> Values:
    # AE: leading and trailing spaces are both insignificant (PS3.5 Table 6.2-1).
    return _string_values([part.strip() for part in value.decode("latin-1").split("\\")])


def _ur(value: bytes, little: bool, encodings: list[str]) -> Values:
    # UR: single valued, backslash allowed, trailing spaces insignificant.
    text = value.decode("latin-1").rstrip()
    return [text] if text else None


def _multi_text(value: bytes, little: bool, encodings: list[str]) -> Values:
    # SH, LO, UC: character-set dependent, multi-valued.
    parts = _decode_text(value, encodings).split("\\")
    return _string_values([part.rstrip("\x00 ") for part in parts])


def _single_text(value: bytes, little: bool, encodings: list[str]) -> Values:
    # ST, LT, UT: character-set dependent, single valued, backslash is a character.
    text = _decode_text(value, encodings).rstrip("\x00 ")
    return [text] if text else None


def _pn(value: bytes, little: bool, encodings: list[str]) -> Values:
    # PN (PS3.5 6.2.1): values split on "\", component groups on "=".
    value = value.rstrip(b"\x00 ")
    if not value:
        return None
    if value.isascii() and _ESC not in value:
        groups = [name.split("=") for name in value.decode("ascii").split("\\")]
    else:
        names = convert_PN(value, encodings)
        items = [names] if isinstance(names, PersonName) else list(names)
        groups = [list(name.components) for name in items]
    values = _pn_values(groups)
    if len(values) == 1 and values[0] is None:
        return None
    return values


def _pn_components(item: Any) -> list[str]:
    if isinstance(item, PersonName):
        return list(item.components)
    return str(item).split("=")


def _pn_values(names: Iterable[list[str]]) -> list[Any]:
    values: list[Any] = []
    for groups in names:
        while groups and not groups[-1]:
            groups.pop()
        if not groups:
            values.append(None)
        else:
            values.append(
                {key: group for key, group in zip(_PN_GROUPS, groups, strict=False) if group}
            )
    return values


def _is_item(text: str) -> int | str | None:
    # IS (PS3.5 Table 6.2-1); pydicom also accepts integral decimals such as "1.0".
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else text


def _ds_item(text: str) -> float | str | None:
    # DS: JSON Number (Table F.2.3-1); non-finite values have no JSON number, keep the text.
    text = text.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _numeric_strings(convert: Callable[[str], Any], strip: bool) -> _RawConverter:
    def converter(value: bytes, little: bool, encodings: list[str]) -> Values:
        text = value.decode("latin-1")
        parts = (text.strip() if strip else text).rstrip(" \x00").split("\\")
        if len(parts) == 1:
            item = convert(parts[0])
            return None if item is None else [item]
        return [convert(part) for part in parts]

    return converter


def _binary_numbers(code: str, size: int) -> _RawConverter:
    def converter(value: bytes, little: bool, encodings: list[str]) -> Values:
        count, remainder = divmod(len(value), size)
        if remainder:
            raise ValueError("value length is not a multiple of the VR size")
        return list(struct.unpack(f"{'<' if little else '>'}{count}{code}", value))

    return converter


def _at(value: bytes, little: bool, encodings: list[str]) -> Values:
    count = len(value) // 4  # pydicom ignores a partial trailing tag
    numbers = struct.unpack(f"{'<' if little else '>'}{count * 2}H", value[: count * 4])
    return [f"{numbers[i] << 16 | numbers[i + 1]:08X}" for i in range(0, len(numbers), 2)]


_RAW_CONVERTERS: dict[str, _RawConverter] = {
    "AE": _ae,
    "AS": _default_repertoire,
    "AT": _at,
    "CS": _default_repertoire,
    "DA": _default_repertoire,
    "DS": _numeric_strings(_ds_item, strip=True),
    "DT": _default_repertoire,
    "FD": _binary_numbers("d", 8),
    "FL": _binary_numbers("f", 4),
    "IS": _numeric_strings(_is_item, strip=False),
    "LO": _multi_text,
    "LT": _single_text,
    "PN": _pn,
    "SH": _multi_text,
    "SL": _binary_numbers("l", 4),
    "SS": _binary_numbers("h", 2),
    "ST": _single_text,
    "SV": _binary_numbers("q", 8),
    "TM": _default_repertoire,
    "UC": _multi_text,
    "UI": _default_repertoire,
    "UL": _binary_numbers("L", 4),
    "UR": _ur,
    "US": _binary_numbers("H", 2),
    "UT": _single_text,
    "UV": _binary_numbers("Q", 8),
}


# --- pydicom values -> JSON values ----------------------------------------------------------


def _string_item(item: Any) -> Any:
    return item if item != "" else None


def _int_item(item: Any) -> Any:
    return int(item)


def _float_item(item: Any) -> Any:
    return float(item)


def _is_object(item: Any) -> Any:
    if isinstance(item, int):
        return int(item)
    return _is_item(str(item))


def _ds_object(item: Any) -> Any:
    if isinstance(item, float) and math.isfinite(item):
        return float(item)
    return _ds_item(str(item))


_ELEMENT_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "DS": _ds_object,
    "FD": _float_item,
    "FL": _float_item,
    "IS": _is_object,
    "SL": _int_item,
    "SS": _int_item,
    "SV": _int_item,
    "UL": _int_item,
    "US": _int_item,
    "US or SS": _int_item,
    "UV": _int_item,
}
