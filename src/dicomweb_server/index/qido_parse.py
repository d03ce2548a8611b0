"""Turn QIDO-RS query parameters into a :class:`ParsedQuery` (PS3.18 8.3.4 and 10.6.1).

Parsing is separate from the search (:mod:`.qido`) so that every malformed or unsupported
request is refused, with a message naming the offending parameter, before the database is
touched: each search transaction defines which attributes are permitted (PS3.18 8.3.4.1),
and refusing a key is better than answering a different question than was asked.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Sequence
from typing import Final

from pydicom.datadict import get_entry, tag_for_keyword

from dicomweb_server.dicom.uids import is_valid_uid
from dicomweb_server.dicom.values import normalize_da, normalize_dt, normalize_pn, normalize_tm
from dicomweb_server.errors import BadRequest, UnsupportedQuery
from dicomweb_server.index.qido_keys import (
    MATCH_KEYS,
    Condition,
    EmptyValueMatch,
    FuzzyNameMatch,
    IntegerMatch,
    Matcher,
    MatchKey,
    MatchKind,
    ParsedQuery,
    QueryLevel,
    RangeMatch,
    UidListMatch,
    ValueMatch,
)

__all__ = ["parse_query"]


# -- attribute names ------------------------------------------------------------------------

_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")


# The data dictionary never changes while the process runs, and clients repeat the same
# few names (OHIF sends its includefield list with every search): look each up once.
@functools.lru_cache(maxsize=1024)
def _resolve_token(token: str) -> str | None:
    """The 8-digit upper-case tag of a keyword or tag known to the data dictionary, or None.

    PS3.18 8.3.4.1: ``attribute-id = tag *("." tag) / keyword *("." keyword)`` with keywords
    from PS3.6 Table 6-1. Private tags (odd group) are accepted as tags since they cannot
    be looked up; matching on them is refused later as unsupported.
    """
    if _HEX_TAG.fullmatch(token):
        tag = int(token, 16)
        if (tag >> 16) % 2 == 1:
            return f"{tag:08X}"
        try:
            get_entry(tag)
        except KeyError:
            return None
        return f"{tag:08X}"
    found = tag_for_keyword(token)
    return f"{found:08X}" if found is not None else None


def _resolve_path(name: str) -> tuple[str, ...] | None:
    tokens = name.split(".")
    tags = [_resolve_token(token) for token in tokens]
    if any(tag is None for tag in tags):
        return None
    return tuple(tag for tag in tags if tag is not None)


def _private_creator(tag: str) -> str | None:
    """The Private Creator element that reserves a private data element (PS3.5 7.8.1)."""
    group, element = int(tag[:4], 16), int(tag[4:], 16)
    if group % 2 == 1 and element >= 0x1000:
        return f"{group:04X}00{element >> 8:02X}"
    return None


# -- values ---------------------------------------------------------------------------------

_TM_PARTS = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")
_DT_PARTS = re.compile(
    r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?(?:([+-])(\d{2})(\d{2}))?"
)


def _bad_value(keyword: str, value: str, what: str) -> BadRequest:
    return BadRequest(f"invalid {what} {value!r} for {keyword}")


def _date(keyword: str, text: str) -> str:
    # Only ASCII digits are DICOM digits (PS3.5 6.2); "\d" alone would admit others.
    normalised = normalize_da(text) if text.isascii() else None
    if normalised is None:
        raise _bad_value(keyword, text, "date (expected YYYYMMDD)")
    try:
        datetime.date(int(normalised[:4]), int(normalised[4:6]), int(normalised[6:]))
    except ValueError:
        raise _bad_value(keyword, text, "date") from None
    return normalised


def _time(keyword: str, text: str, *, upper: bool) -> str:
    match = _TM_PARTS.fullmatch(text) if text.isascii() else None
    normalised = normalize_tm(text, upper=upper) if match else None
    if match is None or normalised is None:
        raise _bad_value(keyword, text, "time (expected HH[MM[SS[.F{1,6}]]])")
    hh, mm, ss, _frac = match.groups()
    if int(hh) > 23 or int(mm or 0) > 59 or int(ss or 0) > 60:
        raise _bad_value(keyword, text, "time")
    return normalised


def _datetime_valid(text: str) -> bool:
    match = _DT_PARTS.fullmatch(text) if text.isascii() else None
    if match is None:
        return False
    _year, month, day, hh, mm, ss, frac, sign, off_h, off_m = match.groups()
    if frac is not None and ss is None:
        return False
    checks = [
        month is None or 1 <= int(month) <= 12,
        day is None or 1 <= int(day) <= 31,
        hh is None or int(hh) <= 23,
        mm is None or int(mm) <= 59,
        ss is None or int(ss) <= 60,
        sign is None or (int(off_h) <= 14 and int(off_m) <= 59),
    ]
    return all(checks)


def _datetime(text: str, *, upper: bool) -> str:
    normalised = normalize_dt(text, upper=upper)
    assert normalised is not None  # callers check _datetime_valid first
    return normalised


def _range(keyword: str, value: str, lower: str | None, upper: str | None) -> RangeMatch:
    if lower is not None and upper is not None and lower > upper:
        raise BadRequest(f"invalid range {value!r} for {keyword}: the start is after the end")
    return RangeMatch(lower, upper)


def _date_matcher(keyword: str, value: str) -> RangeMatch:
    """Single date or range ``A-B``, ``A-``, ``-B`` (PS3.4 C.2.2.2.1 and C.2.2.2.5.1)."""
    if "-" not in value:
        day = _date(keyword, value)
        return RangeMatch(day, day)
    parts = value.split("-")
    if len(parts) != 2 or not any(parts):
        raise BadRequest(f"invalid date range {value!r} for {keyword}")
    start, end = (part.strip() for part in parts)
    return _range(
        keyword,
        value,
        _date(keyword, start) if start else None,
        _date(keyword, end) if end else None,
    )


def _time_matcher(keyword: str, value: str) -> RangeMatch:
    """Single time or range; a single time matches the whole interval its precision names.

    PS3.5 6.2 lets TM stop after any component, so ``10`` is "during the ten o'clock hour":
    the single value ``10`` matches 10:00:00 to 10:59:59.999999, and ``101530`` the whole
    second. Ranges use the same rule for their upper bound (``-12`` includes 12:59).
    """
    if "-" not in value:
        return RangeMatch(_time(keyword, value, upper=False), _time(keyword, value, upper=True))
    parts = value.split("-")
    if len(parts) != 2 or not any(parts):
        raise BadRequest(f"invalid time range {value!r} for {keyword}")
    start, end = (part.strip() for part in parts)
    return _range(
        keyword,
        value,
        _time(keyword, start, upper=False) if start else None,
        _time(keyword, end, upper=True) if end else None,
    )


def _datetime_matcher(keyword: str, value: str) -> RangeMatch:
    """Single date-time (over its precision) or range.

    DT values may carry a UTC offset such as ``-0500``, so a ``-`` is not necessarily the
    range separator: the first split whose two sides are valid, ordered date-times wins,
    otherwise the whole value must be one date-time. Offsets are dropped (the index stores
    local time, see :func:`normalize_dt`).
    """
    for index, char in enumerate(value):
        if char != "-":
            continue
        start, end = value[:index].strip(), value[index + 1 :].strip()
        if not (start or end):
            continue
        if (start and not _datetime_valid(start)) or (end and not _datetime_valid(end)):
            continue
        lower = _datetime(start, upper=False) if start else None
        upper = _datetime(end, upper=True) if end else None
        if lower is None or upper is None or lower <= upper:
            return RangeMatch(lower, upper)
    if _datetime_valid(value):
        return RangeMatch(_datetime(value, upper=False), _datetime(value, upper=True))
    raise BadRequest(f"invalid date-time or date-time range {value!r} for {keyword}")


def _split_values(value: str) -> list[str]:
    """Backslash-separated values (Multiple Value Matching, PS3.4 C.2.2.2), stripped."""
    return [part.strip() for part in value.split("\\") if part.strip()]


_FUZZY_SEPARATORS = re.compile(r"[\^=\s,\-]+")


def _string_matcher(key: MatchKey, value: str, fuzzy: bool) -> Matcher | None:
    """None means universal matching (a value of ``*`` is universal, PS3.4 C.2.2.2.4)."""
    values = _split_values(value)
    if key.kind is MatchKind.PERSON_NAME:
        values = [normalize_pn(item) for item in values]
        values = [item for item in values if item]
    if not values or "*" in values:
        return None
    if key.kind is MatchKind.PERSON_NAME and not fuzzy:
        values = _optional_components(values)
    if key.kind is MatchKind.PERSON_NAME and fuzzy:
        alternatives = []
        for item in values:
            # A token of only "*" constrains nothing; a name of only such tokens is universal.
            tokens = tuple(token for token in _FUZZY_SEPARATORS.split(item) if token.strip("*"))
            if not tokens:
                return None
            alternatives.append(tokens)
        return FuzzyNameMatch(tuple(alternatives))
    return ValueMatch(tuple(dict.fromkeys(values)))


def _optional_components(names: list[str]) -> list[str]:
    """Also match names lacking trailing components a query gives as only ``*``.

    Stored names drop empty trailing components (:func:`normalize_pn`), so ``Doe^*`` has
    to match "Doe" as well as "Doe^John": "*" matches a zero-length value (PS3.4
    C.2.2.2.4), and an empty component is not stored at all.
    """
    expanded: list[str] = []
    for name in names:
        expanded.append(name)
        while name.endswith("^*"):
            name = name[:-2]
            expanded.append(name)
    return expanded


def _uid_matcher(keyword: str, value: str) -> UidListMatch:
    """One UID or a list separated by commas (PS3.18 8.3.4.1) or backslashes (PS3.4)."""
    uids = [part.strip() for part in re.split(r"[,\\]", value)]
    for uid in uids:
        if not is_valid_uid(uid):
            raise BadRequest(f"invalid UID {uid!r} for {keyword} (PS3.5 9.1 grammar)")
    return UidListMatch(tuple(dict.fromkeys(uids)))


def _integer_matcher(keyword: str, value: str) -> IntegerMatch:
    numbers = []
    for part in _split_values(value):
        # IS holds a 32-bit signed integer (PS3.5 6.2); larger values would only fail later,
        # in the database, as a server error.
        if not re.fullmatch(r"[+-]?\d{1,10}", part) or not -(2**31) <= int(part) < 2**31:
            raise _bad_value(keyword, part, "integer")
        numbers.append(int(part))
    if not numbers:
        raise _bad_value(keyword, value, "integer")
    return IntegerMatch(tuple(dict.fromkeys(numbers)))


def _matcher(key: MatchKey, value: str, *, fuzzy: bool, empty_matching: bool) -> Matcher | None:
    if empty_matching and value == '""':
        return EmptyValueMatch()
    if key.kind in (MatchKind.STRING, MatchKind.PERSON_NAME):
        return _string_matcher(key, value, fuzzy)
    if key.kind is MatchKind.UID:
        return _uid_matcher(key.keyword, value)
    if key.kind is MatchKind.DATE:
        return _date_matcher(key.keyword, value)
    if key.kind is MatchKind.TIME:
        return _time_matcher(key.keyword, value)
    if key.kind is MatchKind.DATETIME:
        return _datetime_matcher(key.keyword, value)
    return _integer_matcher(key.keyword, value)


# -- parameters -----------------------------------------------------------------------------

_SINGLE_USE: Final = (
    "fuzzymatching",
    "limit",
    "offset",
    "emptyvaluematching",
    "multiplevaluematching",
)


def _boolean(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false, not {value!r}")
    return lowered == "true"


_MAX_UINT: Final = 2**62  # below the 64-bit integers LIMIT / OFFSET take in both databases


def _uint(name: str, value: str) -> int:
    """``uint`` of PS3.18 Table 8.3.4-1: ASCII digits only, so no sign, space or fraction."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > _MAX_UINT:
        raise BadRequest(f"{name} must be a non-negative integer, not {value!r}")
    return int(text)


def _include_tags(value: str) -> tuple[bool, set[str]]:
    """``includefield`` = ``1#attribute / "all"`` (PS3.18 8.3.4.3), repeatable."""
    include_all = False
    tags: set[str] = set()
    for token in (part.strip() for part in value.split(",")):
        if not token:
            continue
        if token.lower() == "all":
            include_all = True
            continue
        path = _resolve_path(token)
        if path is None:
            raise UnsupportedQuery(f"unknown includefield attribute {token}")
        tags.add(path[0])
        creator = _private_creator(path[0])
        if creator is not None:
            tags.add(creator)
    return include_all, tags


def _check_path_uid(name: str, uid: str | None) -> None:
    if uid is not None and not is_valid_uid(uid):
        raise BadRequest(f"invalid {name} {uid!r} in the path (PS3.5 9.1 grammar)")


def parse_query(
    level: QueryLevel,
    params: Sequence[tuple[str, str]],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    default_limit: int,
    max_limit: int,
) -> ParsedQuery:
    """Validate and parse the query parameters of a QIDO-RS search.

    Parameters
    ----------
    level : QueryLevel
        The level the target resource searches (PS3.18 10.6.1.1).
    params : sequence of (str, str)
        The query parameters in request order, repeated names kept, without the format
        parameters ``accept`` and ``charset`` (handled by the HTTP layer).
    study_uid, series_uid : str, optional
        UIDs from the path of ``/studies/{study}/series``, ``/studies/{study}/instances``
        and ``/studies/{study}/series/{series}/instances``.
    default_limit, max_limit : int
        Page size when ``limit`` is absent, and the most results one response may carry.

    Returns
    -------
    ParsedQuery

    Raises
    ------
    UnsupportedQuery
        A name that is no DICOM attribute, or an attribute this server cannot match on at
        `level`: ignoring it silently would return matches the client did not ask for.
    BadRequest
        A malformed value: date, time, range, UID, integer, ``limit``, ``offset`` or a
        boolean; or a parameter given twice that may appear only once.
    """
    if series_uid is not None and (level is not QueryLevel.INSTANCE or study_uid is None):
        raise ValueError("a series UID in the path needs an instance search within a study")
    if study_uid is not None and level is QueryLevel.STUDY:
        raise ValueError("a study search cannot be scoped to a study")
    _check_path_uid("Study Instance UID", study_uid)
    _check_path_uid("Series Instance UID", series_uid)

    single: dict[str, str] = {}
    include_all = False
    include_tags: set[str] = set()
    keyed: list[tuple[str, str]] = []
    for name, value in params:
        if name == "includefield":
            found_all, tags = _include_tags(value)
            include_all = include_all or found_all
            include_tags |= tags
        elif name in _SINGLE_USE:
            if name in single:
                raise BadRequest(f"{name} may be given only once")
            single[name] = value
        else:
            keyed.append((name, value))

    fuzzy = (
        _boolean("fuzzymatching", single["fuzzymatching"]) if "fuzzymatching" in single else False
    )
    empty_matching = (
        _boolean("emptyvaluematching", single["emptyvaluematching"])
        if "emptyvaluematching" in single
        else False
    )
    if "multiplevaluematching" in single:
        # Multiple Value Matching (PS3.4 C.2.2.2) is always applied to non-UID string keys.
        _boolean("multiplevaluematching", single["multiplevaluematching"])
    offset = _uint("offset", single["offset"]) if "offset" in single else 0
    warnings: list[str] = []
    if "limit" in single:
        limit = _uint("limit", single["limit"])
        if limit > max_limit:
            warnings.append(
                f"The requested limit of {limit} exceeds the maximum of {max_limit} results "
                f"supported by the server; at most {max_limit} results are returned."
            )
            limit = max_limit
    else:
        limit = min(default_limit, max_limit)

    conditions: list[Condition] = []
    match_tags: set[str] = set()
    seen: set[tuple[str, ...]] = set()
    for name, raw in keyed:
        path = _resolve_path(name)
        if path is None:
            raise UnsupportedQuery(f"unknown query key {name}")
        if path in seen:
            raise BadRequest(f"query key {name} is given more than once")
        seen.add(path)
        key = MATCH_KEYS.get(".".join(path))
        allowed = key is not None and key.level.depth <= level.depth
        value = raw.strip()
        if not value:
            # Universal matching (PS3.4 C.2.2.2.3): no filter, the attribute is returned.
            if key is not None and allowed:
                match_tags.add(key.return_tag)
            else:
                include_tags.add(path[0])
            continue
        if key is None or not allowed:
            raise UnsupportedQuery(
                f"{name} is not a supported matching key for {level.value.lower()} searches"
            )
        match_tags.add(key.return_tag)
        matcher = _matcher(key, value, fuzzy=fuzzy, empty_matching=empty_matching)
        if matcher is not None:
            conditions.append(Condition(key, matcher))

    return ParsedQuery(
        level=level,
        study_uid=study_uid,
        series_uid=series_uid,
        conditions=tuple(conditions),
        match_tags=frozenset(match_tags),
        include_tags=frozenset(include_tags),
        include_all=include_all,
        fuzzy=fuzzy,
        limit=limit,
        offset=offset,
        warnings=tuple(warnings),
    )
