"""The vocabulary of QIDO-RS searches: levels, matching keys, matchers and the parsed query.

Shared by :mod:`.qido_parse` (which builds a :class:`ParsedQuery` from query parameters),
:mod:`.qido_sql` (which turns its conditions into SQL) and :mod:`.qido` (which runs it). A
parsed query holds no SQL, so it can be validated, logged or reused independently of the
database dialect.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MATCH_KEYS",
    "Condition",
    "EmptyValueMatch",
    "FuzzyNameMatch",
    "IntegerMatch",
    "MatchKey",
    "MatchKind",
    "Matcher",
    "ParsedQuery",
    "QueryLevel",
    "RangeMatch",
    "UidListMatch",
    "ValueMatch",
    "Via",
]


class QueryLevel(enum.Enum):
    """The level a search returns (PS3.18 10.6.1.1): one result per study, series or instance."""

    STUDY = "STUDY"
    SERIES = "SERIES"
    INSTANCE = "INSTANCE"

    @property
    def depth(self) -> int:
        """0 for studies, 1 for series, 2 for instances; a key works at its depth and below."""
        return _DEPTH[self]


_DEPTH: Final = {QueryLevel.STUDY: 0, QueryLevel.SERIES: 1, QueryLevel.INSTANCE: 2}


class MatchKind(enum.Enum):
    """How a key's value is interpreted, after the VR rules of PS3.4 C.2.2.2."""

    STRING = "string"  # SH/LO/CS: case-sensitive single value, wild card, multiple values
    PERSON_NAME = "pn"  # PN: case- and accent-insensitive, wild card, fuzzy
    UID = "uid"  # UI: single value or UID list (PS3.4 C.2.2.2.2)
    DATE = "da"  # DA: single value or range (PS3.4 C.2.2.2.5)
    TIME = "tm"  # TM: single value (as a range over its precision) or range
    DATETIME = "dt"  # DT: as TM
    INTEGER = "int"  # IS: integer equality


class Via(enum.Enum):
    """Where the index keeps what a key is matched against (see :mod:`.qido`)."""

    COLUMN = "column"  # a column of studies / series / instances
    MODALITIES = "modalities"  # some series of the study has the modality
    SOP_CLASSES = "sop_classes"  # some instance of the study has the SOP class
    REQUEST_ITEM = "request_item"  # an item of the series' Request Attributes Sequence


@dataclass(frozen=True, slots=True)
class MatchKey:
    """A supported matching key.

    Attributes
    ----------
    path : str
        Tags joined by ".", e.g. ``"00100010"`` or ``"00400275.00400009"``.
    keyword : str
        The keyword form of `path`, used in messages and the conformance statement.
    level : QueryLevel
        The information entity the attribute belongs to; the key may be used in searches at
        that level and below (PS3.18 10.6.1.2 lets series and instance searches match on
        the attributes of their parents).
    kind : MatchKind
        How the value is parsed and matched.
    via : Via
        Which part of the index holds the matched values.
    """

    path: str
    keyword: str
    level: QueryLevel
    kind: MatchKind
    via: Via = Via.COLUMN

    @property
    def return_tag(self) -> str:
        """The top-level attribute returned for this key (the sequence for item keys)."""
        return self.path.split(".", 1)[0]


def _key(
    path: str, keyword: str, level: QueryLevel, kind: MatchKind, via: Via = Via.COLUMN
) -> tuple[str, MatchKey]:
    return path, MatchKey(path, keyword, level, kind, via)


_S, _R, _I = QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.INSTANCE
_STR, _PN, _UI = MatchKind.STRING, MatchKind.PERSON_NAME, MatchKind.UID
_DA, _TM, _DT, _IS = MatchKind.DATE, MatchKind.TIME, MatchKind.DATETIME, MatchKind.INTEGER

#: Every supported matching key, by tag path. PS3.18 Table 10.6.1-5 plus the attributes the
#: index keeps columns for.
MATCH_KEYS: Final[dict[str, MatchKey]] = dict(
    [
        # Study level (with the patient, Study Root model: PS3.4 C.6.2.1.2)
        _key("00080020", "StudyDate", _S, _DA),
        _key("00080030", "StudyTime", _S, _TM),
        _key("00080050", "AccessionNumber", _S, _STR),
        _key("00080061", "ModalitiesInStudy", _S, _STR, Via.MODALITIES),
        _key("00080062", "SOPClassesInStudy", _S, _UI, Via.SOP_CLASSES),
        _key("00080090", "ReferringPhysicianName", _S, _PN),
        _key("00081030", "StudyDescription", _S, _STR),
        _key("00100010", "PatientName", _S, _PN),
        _key("00100020", "PatientID", _S, _STR),
        _key("00100030", "PatientBirthDate", _S, _DA),
        _key("00100040", "PatientSex", _S, _STR),
        _key("0020000D", "StudyInstanceUID", _S, _UI),
        _key("00200010", "StudyID", _S, _STR),
        # Series level
        _key("00080021", "SeriesDate", _R, _DA),
        _key("00080031", "SeriesTime", _R, _TM),
        _key("00080060", "Modality", _R, _STR),
        _key("0008103E", "SeriesDescription", _R, _STR),
        _key("00180015", "BodyPartExamined", _R, _STR),
        _key("0020000E", "SeriesInstanceUID", _R, _UI),
        _key("00200011", "SeriesNumber", _R, _IS),
        _key("00400244", "PerformedProcedureStepStartDate", _R, _DA),
        _key("00400245", "PerformedProcedureStepStartTime", _R, _TM),
        _key(
            "00400275.00080050",
            "RequestAttributesSequence.AccessionNumber",
            _R,
            _STR,
            Via.REQUEST_ITEM,
        ),
        _key(
            "00400275.00400009",
            "RequestAttributesSequence.ScheduledProcedureStepID",
            _R,
            _STR,
            Via.REQUEST_ITEM,
        ),
        _key(
            "00400275.00401001",
            "RequestAttributesSequence.RequestedProcedureID",
            _R,
            _STR,
            Via.REQUEST_ITEM,
        ),
        # Instance level
        _key("00080016", "SOPClassUID", _I, _UI),
        _key("00080018", "SOPInstanceUID", _I, _UI),
        _key("00080023", "ContentDate", _I, _DA),
        _key("00080033", "ContentTime", _I, _TM),
        _key("0008002A", "AcquisitionDateTime", _I, _DT),
        _key("00200013", "InstanceNumber", _I, _IS),
    ]
)


# -- matchers: what a condition asks of one key, independent of SQL -----------------------


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """Single value, wild card or multiple value matching (PS3.4 C.2.2.2.1, C.2.2.2.4).

    Patterns keep DICOM wild card syntax (``*`` any sequence, ``?`` one character); for
    person names they are already in :func:`normalize_pn` form.
    """

    patterns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FuzzyNameMatch:
    """Fuzzy person name matching: any alternative whose every token prefixes a name word."""

    alternatives: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class UidListMatch:
    """Single value or list of UID matching (PS3.4 C.2.2.2.2)."""

    uids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RangeMatch:
    """Inclusive range over the normalised forms of :mod:`dicomweb_server.dicom.values`.

    A missing bound is open (PS3.4 C.2.2.2.5: ``A-`` and ``-B``).
    """

    lower: str | None
    upper: str | None


@dataclass(frozen=True, slots=True)
class IntegerMatch:
    """Integer equality with any of `values`."""

    values: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class EmptyValueMatch:
    """Empty Value Matching (PS3.4 C.2.2.2): the attribute is absent or has no value."""


Matcher = ValueMatch | FuzzyNameMatch | UidListMatch | RangeMatch | IntegerMatch | EmptyValueMatch


@dataclass(frozen=True, slots=True)
class Condition:
    """One matching key with its parsed value."""

    key: MatchKey
    matcher: Matcher


@dataclass(frozen=True)
class ParsedQuery:
    """A validated QIDO-RS search, ready for :func:`dicomweb_server.index.qido.search`.

    Attributes
    ----------
    level : QueryLevel
        What one result is.
    study_uid, series_uid : str or None
        UIDs from the path (``/studies/{s}/...``, ``.../series/{r}/instances``); they
        restrict the search and decide which parent attributes are returned by default.
    conditions : tuple of Condition
        The non-universal matching keys; all must match.
    match_tags : frozenset of str
        Top-level tags of every matching key given, universal ones included; as in C-FIND
        (PS3.4 C.2.2.1) a matching key is also a return key, returned even when empty.
    include_tags : frozenset of str
        ``includefield`` attributes (and empty-valued non-matching attributes); returned
        only when available at the level (PS3.18 10.6.3.3).
    include_all : bool
        ``includefield=all``.
    fuzzy : bool
        ``fuzzymatching=true`` (PS3.18 8.3.4.2).
    limit, offset : int
        Page size after clipping to the server maximum, and results skipped.
    warnings : tuple of str
        Warning texts already known from parsing (a clipped limit).
    patient_id : str or None
        Access restriction, not a query key: only studies whose Patient ID equals this value
        exactly (no wildcards) can match; set for patient-scoped access tokens.
    """

    level: QueryLevel
    study_uid: str | None
    series_uid: str | None
    conditions: tuple[Condition, ...]
    match_tags: frozenset[str]
    include_tags: frozenset[str]
    include_all: bool
    fuzzy: bool
    limit: int
    offset: int
    warnings: tuple[str, ...]
    patient_id: str | None = None
