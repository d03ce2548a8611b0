"""DICOM JSON Model (PS3.18 Annex F) to Native DICOM Model XML (PS3.19 Chapter A).

WADO-RS metadata, QIDO-RS results and STOW-RS responses can be requested as
``application/dicom+xml``; PS3.18 F.3 defines that representation as the Native DICOM Model
of PS3.19 A.1. The server keeps and builds its metadata in the DICOM JSON Model, so XML is
produced by mapping that JSON structure rather than by re-reading the stored instances.

The mapping follows PS3.19 A.1.5 (Tables A.1.5-1 and A.1.5-2) and the normative RELAX NG
schema of PS3.19 A.1.6, read in the current (2024) edition:

* the root ``NativeDicomModel`` element is in the namespace
  ``http://dicom.nema.org/PS3.19/models/NativeDICOM`` and carries ``xml:space="preserve"``,
  which Table A.1.5-1 requires so that leading and trailing spaces of values survive;
* each attribute is a ``DicomAttribute`` with ``tag`` (8 uppercase hex digits), ``vr``,
  ``keyword`` (from pydicom's data dictionary; omitted when the tag is unknown or private,
  as Table A.1.5-2 allows for Data Elements "unknown to the host") and ``privateCreator``;
* its content is one of ``Value`` elements (``number`` 1, 2, ... per value), ``PersonName``
  elements with ``Alphabetic``/``Ideographic``/``Phonetic`` groups split into ``FamilyName``,
  ``GivenName``, ``MiddleName``, ``NamePrefix`` and ``NameSuffix``, ``Item`` elements holding a
  nested data set, one ``BulkData`` element with a ``uri`` attribute, or one ``InlineBinary``
  element holding base64 text; a zero-length attribute has no content at all;
* Group Length (gggg,0000) attributes are left out (PS3.19 A.1.1 forbids them);
* a Private Data Element whose Private Creator is present in the same data set is written
  with ``privateCreator`` set to the creator's value and with the block number removed from
  its tag (``gggg00ee``), as Table A.1.5-2 requires; the Private Creator Data Element
  (gggg,00xx) itself is then not written, because its only content, the creator string, is
  carried by every element of the block and the block number "shall not be sent". PS3.18
  F.3.1 describes the reverse mapping, which re-allocates blocks (PS3.5 7.8.1). A private
  element whose creator is absent or empty keeps its original tag and has no
  ``privateCreator`` (there is nothing to convey), and an empty creator element is kept.

Characters that XML 1.0 cannot carry at all (C0 controls other than TAB, LF and CR, for
example the FORM FEED that PS3.5 allows in LT/ST/UT; lone surrogates; U+FFFE and U+FFFF) are
replaced by U+FFFD REPLACEMENT CHARACTER, not dropped, so the value keeps its length and a
reader can see that something was substituted; a numeric character reference would not
help, because XML 1.0 forbids references to those characters too. Carriage returns are
written as ``&#13;`` so that XML end-of-line normalisation does not turn the CR LF of LT/UT
text into LF.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from operator import itemgetter
from typing import Any, Final

from pydicom.datadict import keyword_for_tag

__all__ = ["NATIVE_DICOM_NAMESPACE", "REPLACEMENT_CHARACTER", "dataset_to_xml"]

NATIVE_DICOM_NAMESPACE: Final = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
"""Default namespace of the Native DICOM Model schema (PS3.19 A.1.6)."""

REPLACEMENT_CHARACTER: Final = "\ufffd"
"""Written in place of each character that XML 1.0 does not allow in a document."""

_HEADER: Final = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    f'<NativeDicomModel xmlns="{NATIVE_DICOM_NAMESPACE}" xml:space="preserve">'
)
_FOOTER: Final = "</NativeDicomModel>"

# The VR enumeration of the PS3.19 A.1.6 schema (which also matches PS3.5 Table 6.2-1).
# fmt: off
_VRS: Final = frozenset((
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV",
))
# fmt: on
_PN_GROUPS: Final = ("Alphabetic", "Ideographic", "Phonetic")
_PN_COMPONENTS: Final = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_TAG_KEY: Final = re.compile(r"[0-9A-Fa-f]{8}")

# Characters outside the XML 1.0 ``Char`` production (W3C XML 1.0, section 2.2).
_INVALID: Final = "\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff"
_TEXT_SPECIAL: Final = re.compile(f"[&<>\r{_INVALID}]")
# In attribute values TAB, LF and CR must be references too, or attribute-value
# normalisation (XML 1.0 section 3.3.3) would turn them into spaces.
_ATTR_SPECIAL: Final = re.compile(f'[&<>"\t\n\r{_INVALID}]')
_ESCAPES: Final = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "\t": "&#9;",
    "\n": "&#10;",
    "\r": "&#13;",
}

_Out = Callable[[str], None]


def dataset_to_xml(dataset: Mapping[str, Any]) -> bytes:
    """Encode a DICOM JSON Model data set as one Native DICOM Model XML document.

    Parameters
    ----------
    dataset : Mapping[str, Any]
        A data set in the DICOM JSON Model of PS3.18 F.2: keys are 8-digit hexadecimal tags,
        values are objects with ``vr`` and at most one of ``Value``, ``BulkDataURI`` or
        ``InlineBinary``. Sequence items are nested data sets of the same form.

    Returns
    -------
    bytes
        A complete UTF-8 XML document, ``<?xml ...?>`` declaration included, whose root is
        ``NativeDicomModel`` (PS3.19 A.1.5), with attributes in ascending order of their
        JSON tags (so the elements of one private block stay together even though their
        written tags lose the block number, see the module notes).

    Raises
    ------
    ValueError
        If a key is not an 8-digit hexadecimal tag, an attribute is not an object, its
        ``vr`` is not one of the VRs enumerated by the PS3.19 A.1.6 schema, or a value
        has a type the JSON Model does not use for that VR. Failing beats writing a
        document that does not match its schema.

    Notes
    -----
    Numbers are written as decimal text: integers exactly, floats in Python's shortest
    round-trip form (the same text a JSON encoder writes, so the XML and JSON metadata
    agree), and the non-finite floats FL/FD can hold as ``NaN``, ``INF`` and ``-INF`` (the
    XML Schema ``double`` spellings). A ``null`` inside ``Value`` (an empty value of a
    multi-valued attribute, PS3.18 F.2.5) becomes an empty ``Value`` or ``PersonName``
    element with its number, as in the PS3.19 Table A.1.5-2 example ``MPG\\\\XR3``.
    """
    parts: list[str] = [_HEADER]
    _write_dataset(dataset, parts.append)
    parts.append(_FOOTER)
    return "".join(parts).encode("utf-8")


def _write_dataset(dataset: Mapping[str, Any], out: _Out) -> None:
    """Write the ``DicomAttribute`` elements of one data set (PS3.19 Table A.1.5-2).

    Private creators are looked up in this data set only, because PS3.5 7.8.1 scopes a
    private block reservation to the data set (or sequence item) that holds it.
    """
    entries: list[tuple[int, str, Any]] = []
    for key, element in dataset.items():
        if not isinstance(key, str) or not _TAG_KEY.fullmatch(key):
            raise ValueError(f"not a DICOM JSON tag: {key!r}")
        tag = int(key, 16)
        if tag & 0xFFFF:  # (gggg,0000) Group Length is never written (PS3.19 A.1.1)
            entries.append((tag, key, element))
    entries.sort(key=itemgetter(0))

    by_tag: dict[int, Any] | None = None
    for tag, key, element in entries:
        if not isinstance(element, Mapping):
            raise ValueError(f"{key}: attribute is not a JSON object")
        group = tag >> 16
        number = tag & 0xFFFF
        creator: str | None = None
        written_tag = tag
        keyword = ""
        if group & 1:
            if 0x0010 <= number <= 0x00FF:
                if _creator_value(element) is not None:
                    continue  # conveyed as privateCreator of the block's elements
            elif number >= 0x1000:
                if by_tag is None:
                    by_tag = {entry[0]: entry[2] for entry in entries}
                creator_element = by_tag.get((group << 16) | (number >> 8))
                if creator_element is not None:
                    creator = _creator_value(creator_element)
                if creator is not None:
                    written_tag = tag & 0xFFFF00FF
        else:
            keyword = _keyword(tag)
        _write_attribute(key, element, written_tag, keyword, creator, out)


def _write_attribute(
    key: str,
    element: Mapping[str, Any],
    tag: int,
    keyword: str,
    creator: str | None,
    out: _Out,
) -> None:
    """Write one ``DicomAttribute`` and its content, choosing the content per PS3.19 A.1.5.

    ``Value``, ``PersonName``, ``Item``, ``BulkData`` and ``InlineBinary`` are mutually
    exclusive in the A.1.6 schema; the JSON Model likewise has at most one of ``Value``,
    ``BulkDataURI`` and ``InlineBinary``, and ``Value`` wins should a producer send more.
    """
    vr = element.get("vr")
    if not isinstance(vr, str) or vr not in _VRS:
        raise ValueError(f"{key}: unsupported VR {vr!r}")
    out(f'<DicomAttribute tag="{tag:08X}" vr="{vr}"')
    if keyword:
        out(f' keyword="{keyword}"')
    if creator is not None:
        out(f' privateCreator="{_attr(creator)}"')

    values = element.get("Value")
    if values:
        if not isinstance(values, list):
            raise ValueError(f"{key}: Value is not an array")
        out(">")
        if vr == "SQ":
            _write_items(key, values, out)
        elif vr == "PN":
            _write_person_names(key, values, out)
        else:
            _write_values(key, vr, values, out)
        out("</DicomAttribute>")
        return

    uri = element.get("BulkDataURI")
    if uri is not None:
        if not isinstance(uri, str):
            raise ValueError(f"{key}: BulkDataURI is not a string")
        out(f'><BulkData uri="{_attr(uri)}"/></DicomAttribute>')
        return

    inline = element.get("InlineBinary")
    if inline:
        if not isinstance(inline, str):
            raise ValueError(f"{key}: InlineBinary is not a string")
        out(f"><InlineBinary>{_text(inline)}</InlineBinary></DicomAttribute>")
        return

    out("/>")  # zero-length attribute: no content (PS3.19 Table A.1.5-2)


def _write_values(key: str, vr: str, values: list[Any], out: _Out) -> None:
    """Write one ``Value`` per DICOM value, numbered from 1 (PS3.19 Table A.1.5-2).

    AT values are written as 8 uppercase hex digits, the form the table prescribes.
    """
    for number, value in enumerate(values, 1):
        if value is None:
            out(f'<Value number="{number}"/>')
            continue
        if isinstance(value, str):
            is_tag = vr == "AT" and _TAG_KEY.fullmatch(value) is not None
            text = value.upper() if is_tag else _text(value)
        elif isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, int):
            text = f"{value:08X}" if vr == "AT" else str(value)
        elif isinstance(value, float):
            text = _float(value)
        else:
            raise ValueError(f"{key}: unexpected {type(value).__name__} value for VR {vr}")
        out(f'<Value number="{number}">{text}</Value>')


def _write_items(key: str, items: list[Any], out: _Out) -> None:
    """Write each sequence item as a numbered ``Item`` holding a data set (PS3.19 A.1.5)."""
    for number, item in enumerate(items, 1):
        if item is not None and not isinstance(item, Mapping):
            raise ValueError(f"{key}: sequence item is not a JSON object")
        if not item:  # an empty item: ``{}`` (``null`` is tolerated the same way)
            out(f'<Item number="{number}"/>')
            continue
        out(f'<Item number="{number}">')
        _write_dataset(item, out)
        out("</Item>")


def _write_person_names(key: str, values: list[Any], out: _Out) -> None:
    """Write each PN value as a numbered ``PersonName`` (PS3.19 A.1.5, PS3.19 10.2).

    The JSON Model gives a PN value as an object with ``Alphabetic``, ``Ideographic`` and
    ``Phonetic`` strings (PS3.18 F.2.2); a plain ``=``-separated string is accepted as well.
    Each group is split at ``^`` into the five components of PS3.5 6.2 in their order;
    empty components are left out, which loses nothing because each component is a named
    element. A sixth or later component (invalid DICOM) stays in ``NameSuffix``, carets
    included, rather than being lost. A value with no non-empty group is an empty
    ``PersonName`` that keeps its number.
    """
    for number, value in enumerate(values, 1):
        groups: list[Any]
        if value is None:
            groups = []
        elif isinstance(value, Mapping):
            groups = [value.get(name) for name in _PN_GROUPS]
        elif isinstance(value, str):
            groups = list(value.split("=", 2))
        else:
            raise ValueError(f"{key}: unexpected {type(value).__name__} value for VR PN")
        body: list[str] = []
        for name, group in zip(_PN_GROUPS, groups, strict=False):
            if not group:
                continue
            if not isinstance(group, str):
                raise ValueError(f"{key}: person name group {name} is not a string")
            components = [
                f"<{component}>{_text(text)}</{component}>"
                for component, text in zip(_PN_COMPONENTS, group.split("^", 4), strict=False)
                if text
            ]
            if components:
                body.append(f"<{name}>{''.join(components)}</{name}>")
        if body:
            out(f'<PersonName number="{number}">{"".join(body)}</PersonName>')
        else:
            out(f'<PersonName number="{number}"/>')


def _creator_value(element: Any) -> str | None:
    """The Private Creator string held by a (gggg,00xx) element, if it has a usable one.

    Surrounding spaces are insignificant in LO values (PS3.5 6.2), so they are stripped;
    an absent, empty or non-string value means the creator cannot be determined.
    """
    if not isinstance(element, Mapping):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values or not isinstance(values[0], str):
        return None
    creator = values[0].strip(" ")
    return creator or None


@lru_cache(maxsize=8192)
def _keyword(tag: int) -> str:
    """The PS3.6 keyword of a public tag from pydicom's dictionary, "" when unknown.

    Repeating groups (e.g. 60xx Overlay) resolve through pydicom's masks. Cached because a
    series metadata response looks up the same few hundred tags thousands of times.
    """
    return keyword_for_tag(tag)


def _float(value: float) -> str:
    """Decimal text for a float; XML Schema ``double`` spellings for non-finite values."""
    if math.isfinite(value):
        return repr(value)
    if math.isnan(value):
        return "NaN"
    return "INF" if value > 0 else "-INF"


def _escape(match: re.Match[str]) -> str:
    return _ESCAPES.get(match.group(), REPLACEMENT_CHARACTER)


def _text(value: str) -> str:
    """Escape character data: markup characters, CR, and characters XML 1.0 forbids."""
    return _TEXT_SPECIAL.sub(_escape, value)


def _attr(value: str) -> str:
    """Escape a double-quoted attribute value, also protecting TAB, LF and CR."""
    return _ATTR_SPECIAL.sub(_escape, value)
