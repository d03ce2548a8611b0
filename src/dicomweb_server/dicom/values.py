"""Normalised forms of attribute values, so matching works as plain string comparison.

The index stores dates, times and person names in these forms and QIDO normalises query
values the same way, which keeps range matching (PS3.4 C.2.2.2.5) and case-insensitive name
matching portable across SQLite and PostgreSQL without database-specific functions.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

_DA = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_TM = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$")


def normalize_da(value: str) -> str | None:
    """``YYYYMMDD`` (the ACR-NEMA form ``YYYY.MM.DD`` is accepted on read), else None."""
    match = _DA.match(value.strip())
    return "".join(match.groups()) if match else None


def normalize_tm(value: str, *, upper: bool = False) -> str | None:
    """``HHMMSS.ffffff`` with missing parts filled in.

    PS3.5 6.2 lets a TM value stop after any component ("10" is 10 o'clock). As a lower
    bound or a stored value the missing part is zero; as the upper bound of a range
    (``upper``) it is the end of that hour or minute, so ``-12`` includes 12:59.
    """
    match = _TM.match(value.strip())
    if not match:
        return None
    hh, mm, ss, frac = match.groups()
    fill = "59" if upper else "00"
    frac_fill = "9" if upper else "0"
    fraction = (frac or "").ljust(6, frac_fill) if frac or ss else frac_fill * 6
    text = f"{hh}{mm or fill}{ss or fill}.{fraction}"
    return text if int(hh) < 24 else None


def normalize_dt(value: str, *, upper: bool = False) -> str | None:
    """``YYYYMMDDHHMMSS.ffffff``; the UTC offset suffix is dropped (matched as local time)."""
    match = _DT.match(value.strip())
    if not match:
        return None
    year, month, day, hh, mm, ss, frac, _offset = match.groups()
    if upper:
        parts = [year, month or "12", day or "31", hh or "23", mm or "59", ss or "59"]
        fraction = (frac or "").ljust(6, "9")
    else:
        parts = [year, month or "01", day or "01", hh or "00", mm or "00", ss or "00"]
        fraction = (frac or "").ljust(6, "0")
    return "".join(parts) + "." + fraction


def normalize_pn(value: str) -> str:
    """Case- and accent-folded person name with empty trailing components removed.

    PS3.18 asks for case-insensitive PN matching; folding accents as well is what users
    typing "Muller" for "Müller" expect and is documented as part of fuzzy matching.
    """
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    groups = []
    for group in stripped.casefold().split("="):
        components = [component.strip() for component in group.split("^")]
        while components and not components[-1]:
            components.pop()
        groups.append("^".join(components))
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def pn_to_text(value: Any) -> str:
    """The DICOM string form of a DICOM JSON person name value object."""
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping):
        return ""
    groups = [str(value.get(key, "")) for key in ("Alphabetic", "Ideographic", "Phonetic")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def first_value(metadata: Mapping[str, Any], tag: str) -> Any:
    """The first value of an attribute in DICOM JSON, or None."""
    attribute = metadata.get(tag)
    if not isinstance(attribute, Mapping):
        return None
    values = attribute.get("Value")
    if not values:
        return None
    return values[0]


def first_text(metadata: Mapping[str, Any], tag: str) -> str | None:
    """The first value as text (person names flattened), or None when absent or empty."""
    value = first_value(metadata, tag)
    if value is None:
        return None
    if isinstance(value, Mapping):
        text = pn_to_text(value)
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    return text or None


def first_int(metadata: Mapping[str, Any], tag: str) -> int | None:
    """The first value as an integer (IS/US/...), or None."""
    value = first_value(metadata, tag)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
