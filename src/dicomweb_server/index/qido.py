"""The QIDO-RS search engine (PS3.18 10.6): a parsed query in, DICOM JSON datasets out.

No HTTP here: the API layer parses the request with :func:`parse_query`, calls
:func:`search` and turns :attr:`SearchResult.warnings` into ``Warning: 299`` headers.

Conformance statement
---------------------
Matching keys (a key may also be used at the levels below its own, PS3.18 10.6.1.2; any
other DICOM attribute given with a value is refused with 400, never ignored):

=========================================================  =========  ====================
Key (keyword / tag)                                        Level      Matching
=========================================================  =========  ====================
StudyDate 00080020, PatientBirthDate 00100030              study      single, range
StudyTime 00080030                                         study      single, range
AccessionNumber 00080050, PatientID 00100020,              study      single, wild card,
StudyID 00200010, StudyDescription 00081030,                          multiple values
PatientSex 00100040
ModalitiesInStudy 00080061                                 study      single, wild card,
                                                                      multiple values (any
                                                                      series of the study)
SOPClassesInStudy 00080062                                 study      UID list (any
                                                                      instance of the study)
PatientName 00100010, ReferringPhysicianName 00080090      study      PN (below), fuzzy
StudyInstanceUID 0020000D                                  study      UID list
Modality 00080060, SeriesDescription 0008103E,             series     single, wild card,
BodyPartExamined 00180015                                             multiple values
SeriesInstanceUID 0020000E                                 series     UID list
SeriesNumber 00200011                                      series     integer (list)
SeriesDate 00080021, PerformedProcedureStepStartDate       series     single, range
00400244
SeriesTime 00080031, PerformedProcedureStepStartTime       series     single, range
00400245
RequestAttributesSequence.ScheduledProcedureStepID         series     sequence item:
00400275.00400009, ...RequestedProcedureID                            single, wild card,
00400275.00401001, ...AccessionNumber 00400275.00080050               multiple values
SOPClassUID 00080016, SOPInstanceUID 00080018              instance   UID list
InstanceNumber 00200013                                    instance   integer (list)
ContentDate 00080023                                       instance   single, range
ContentTime 00080033                                       instance   single, range
AcquisitionDateTime 0008002A                               instance   single, range
=========================================================  =========  ====================

Matching types (PS3.4 C.2.2.2):

* Universal: an empty value (or ``*`` for string and PN keys) does not filter; the
  attribute is returned, empty when the entity has no value.
* Single value: exact and case-sensitive for strings (LO, SH, CS); leading and trailing
  spaces of the query value are not significant.
* Wild card: ``*`` (any sequence) and ``?`` (one character) in string and PN keys only;
  UID, date, time and numeric keys refuse them as malformed.
* Multiple values: ``CT\\MR`` in a string or PN key matches either value (Multiple Value
  Matching, PS3.4 C.2.2.2; always applied, ``multiplevaluematching`` is accepted but
  changes nothing).
* UID list: UIDs separated by ``,`` (PS3.18 8.3.4.1) or ``\\``; each must satisfy the
  PS3.5 9.1 grammar.
* Range: ``A-B``, ``A-``, ``-B`` on DA, TM and DT keys, bounds inclusive, start not after
  end. A single TM or DT value matches the whole interval its precision names (``10``
  is 10:00:00 to 10:59:59.999999). DA and TM keys are matched separately (no combined
  date-time matching); DT UTC offsets are ignored.
* Empty value: with ``emptyvaluematching=true`` the value ``""`` matches entities without
  a value (Empty Value Matching, PS3.4 C.2.2.2).
* Integers: ``SeriesNumber`` and ``InstanceNumber`` match by integer equality (``+7`` is
  7); several values may be separated by ``\\``; anything else is a 400.
* Sequence: the item keys of one sequence given in one query must match the same item.
* Person names: case- and accent-insensitive; the query is folded like the stored names
  (:func:`dicomweb_server.dicom.values.normalize_pn`) and wild cards apply to the folded
  form. Without ``=`` in the query, a name also matches when only its alphabetic group
  matches; trailing components of only ``*`` also match absent components (``Doe^*``
  matches "Doe").
* Fuzzy matching (``fuzzymatching=true``, PS3.18 8.3.4.2) on PN keys: the query is split
  into words at ``^``, ``=``, spaces, commas and hyphens, and every word must be a case- and
  accent-insensitive *prefix* of some word of the name (any component, any group). So
  ``PatientName=joh`` matches "Doe^John" and "Johnson^Ann", and ``jo^do`` matches
  "Doe^John". Wild cards inside a word still apply.

Returned attributes: PS3.18 Tables 10.6.3-3 (study), 10.6.3-4 (series) and 10.6.3-5
(instance), with the study attributes added to series results of ``/series`` and to instance
results of ``/instances``, and the series attributes to instance results not scoped to a
series (PS3.18 10.6.3.3.2, 10.6.3.3.3); every matching key; ``includefield`` attributes
available at the level (study attributes at study level; study and series attributes at
series level; everything at instance level). ``includefield=all`` adds every stored
attribute of the level. Bulk data is never returned: attributes with a ``BulkDataURI`` are
dropped, and with ``all`` those with ``InlineBinary`` too.

Parameters: ``includefield`` may repeat and hold comma lists of keywords, tags or ``all``
(unknown keywords are a 400; private tags bring their Private Creator); ``fuzzymatching``,
``emptyvaluematching`` and ``multiplevaluematching`` take ``true`` / ``false``; ``limit``
and ``offset`` are non-negative integers; each of these and each matching key may appear
only once. An empty value for an attribute that is no matching key asks for it to be
returned, like ``includefield``.

Warnings (texts for ``Warning: 299 {service}: ...``): a client ``limit`` above the server
maximum is clipped; when further matches exist beyond the page the PS3.18 8.3.4.4 text
"There are {n} additional results that can be requested" is added.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from pydicom.datadict import dictionary_VR
from sqlalchemy import (
    ARRAY,
    BigInteger,
    BindParameter,
    ColumnElement,
    Integer,
    Row,
    Select,
    String,
    any_,
    bindparam,
    distinct,
    func,
    literal_column,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from dicomweb_server.dicom import levels
from dicomweb_server.index.lookup import Executor
from dicomweb_server.index.models import Instance, Series, Study
from dicomweb_server.index.qido_keys import (
    MATCH_KEYS,
    FuzzyNameMatch,
    ParsedQuery,
    QueryLevel,
    RangeMatch,
    ValueMatch,
    Via,
)
from dicomweb_server.index.qido_parse import parse_query
from dicomweb_server.index.qido_sql import (
    QueryShape,
    Shape,
    modalities_study_count,
    query_shape,
    select_level,
    shape_clauses,
)

__all__ = ["MATCH_KEYS", "ParsedQuery", "QueryLevel", "SearchResult", "parse_query", "search"]


# -- what is returned ------------------------------------------------------------------------

_CHARSET, _TIMEZONE = levels.SPECIFIC_CHARACTER_SET, levels.TIMEZONE_OFFSET
_AVAILABILITY, _RETRIEVE_URL = "00080056", "00081190"
_MODALITIES, _SOP_CLASSES = "00080061", "00080062"
_STUDY_SERIES, _STUDY_INSTANCES, _SERIES_INSTANCES = "00201206", "00201208", "00201209"
_PATIENT_STUDIES, _PATIENT_SERIES, _PATIENT_INSTANCES = "00201200", "00201202", "00201204"
_STUDY_COUNTS: Final = frozenset({_MODALITIES, _STUDY_SERIES, _STUDY_INSTANCES})
_PATIENT_COUNTS: Final = frozenset({_PATIENT_STUDIES, _PATIENT_SERIES, _PATIENT_INSTANCES})
_STUDY_COMPUTED: Final = _STUDY_COUNTS | _PATIENT_COUNTS | {_SOP_CLASSES}
_COMPUTED_TAGS: Final = _STUDY_COMPUTED | {_SERIES_INSTANCES, _RETRIEVE_URL, _AVAILABILITY}

#: PS3.18 Table 10.6.3-3, and the attributes of type R there (returned even when empty).
STUDY_RESULT: Final = (
    _CHARSET, "00080020", "00080030", "00080050", _AVAILABILITY, _MODALITIES, "00080090",
    _TIMEZONE, _RETRIEVE_URL, "00100010", "00100020", "00100030", "00100040", "0020000D",
    "00200010", _STUDY_SERIES, _STUDY_INSTANCES,
)  # fmt: skip
_OPTIONAL: Final = frozenset({_CHARSET, _AVAILABILITY, _TIMEZONE, _RETRIEVE_URL})
STUDY_REQUIRED: Final = frozenset(STUDY_RESULT) - _OPTIONAL
#: PS3.18 Table 10.6.3-4, plus Instance Availability as in Tables 10.6.3-3 and 10.6.3-5.
SERIES_RESULT: Final = (
    _CHARSET, _AVAILABILITY, "00080060", _TIMEZONE, "0008103E", _RETRIEVE_URL, "0020000E",
    "00200011", _SERIES_INSTANCES, "00400244", "00400245", "00400275",
)  # fmt: skip
SERIES_REQUIRED: Final = frozenset({"00080060", "0020000E", "00200011", _SERIES_INSTANCES})
#: PS3.18 Table 10.6.3-5 ("if present in the Instance": nothing is returned empty).
INSTANCE_RESULT: Final = (
    _CHARSET, "00080016", "00080018", _AVAILABILITY, _TIMEZONE, _RETRIEVE_URL, "00200013",
    "00280008", "00280010", "00280011", "00280100",
)  # fmt: skip

_STUDY_ENTITY_TAGS: Final = levels.PATIENT_TAGS | levels.STUDY_TAGS


def _tag_level(tag: str, level: QueryLevel) -> QueryLevel:
    """The entity whose stored attributes hold `tag` in a search at `level`.

    The split follows :mod:`dicomweb_server.dicom.levels`; Specific Character Set and
    Timezone Offset From UTC are taken from the most specific entity searched, and
    Retrieve URL / Instance Availability describe the result itself.
    """
    if tag in (_CHARSET, _TIMEZONE, _RETRIEVE_URL, _AVAILABILITY):
        return level
    if tag in _STUDY_COMPUTED or tag in _STUDY_ENTITY_TAGS:
        return QueryLevel.STUDY
    if tag == _SERIES_INSTANCES or tag in levels.SERIES_TAGS:
        return QueryLevel.SERIES
    return QueryLevel.INSTANCE


#: Where one returned attribute comes from: the index of its source in
#: :attr:`_Plan.source_order`, or :data:`_COMPUTED` for attributes the search computes.
_COMPUTED: Final = -1


#: How to produce one returned attribute, decided once per query shape and applied to every
#: row: (tag, index into the page's parsed sources or _COMPUTED, the value returned when the
#: entity has none (type R and matching keys) or None, the function computing it or None).
#: A plain tuple, unpacked in the per-row loop, where attribute look-ups were a visible cost.
_Step = tuple[str, int, "dict[str, Any] | None", "_Compute | None"]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one search has to fetch and compute, decided once per query."""

    tags: tuple[str, ...]  # attributes to look up for each result
    required: frozenset[str]  # returned with an empty value when the entity has none
    sources: frozenset[QueryLevel]  # whose stored attribute blobs the page query selects
    # The results' recipe in tag order, so that a result is built in the order DICOM JSON
    # lists attributes, without a per-row lookup of levels or VRs nor a sort.
    source_order: tuple[QueryLevel, ...] = ()
    steps: tuple[_Step, ...] = ()

    def wants(self, *tags: str) -> bool:
        return any(tag in self.tags for tag in tags)


def _plan(query: ParsedQuery) -> _Plan:
    """Decide the returned attributes (PS3.18 10.6.3.3) and what the page query must fetch.

    Parent defaults are added only when the path does not already name the parent: the
    study attributes for ``/series`` and ``/instances``, the series attributes for
    ``/instances`` and ``/studies/{s}/instances`` (PS3.18 10.6.3.3.2 and 10.6.3.3.3).
    """
    return _cached_plan(
        query.level,
        query.study_uid is None,
        query.series_uid is None,
        query.include_all,
        query.match_tags,
        query.include_tags,
    )


# A plan depends only on which attributes are asked for, not on the values matched, so the
# few shapes a client sends are planned once per process instead of once per request.
@functools.lru_cache(maxsize=512)
def _cached_plan(
    level: QueryLevel,
    no_study_uid: bool,
    no_series_uid: bool,
    include_all: bool,
    match_tags: frozenset[str],
    include_tags: frozenset[str],
) -> _Plan:
    defaults: list[str] = []
    required: set[str] = set(match_tags)
    if level is QueryLevel.STUDY or no_study_uid:
        defaults += STUDY_RESULT
        required |= STUDY_REQUIRED
    if level is QueryLevel.SERIES or (level is QueryLevel.INSTANCE and no_series_uid):
        defaults += SERIES_RESULT
        required |= SERIES_REQUIRED
    if level is QueryLevel.INSTANCE:
        defaults += INSTANCE_RESULT
    if include_all and level is QueryLevel.STUDY:
        defaults += sorted(_STUDY_COUNTS | {_SOP_CLASSES})
    if include_all and level is QueryLevel.SERIES:
        defaults.append(_SERIES_INSTANCES)
    wanted = [*defaults, *sorted(match_tags), *sorted(include_tags)]
    # PS3.18 10.6.3.3: attributes of levels below the one searched are never returned.
    tags = tuple(
        tag for tag in dict.fromkeys(wanted) if _tag_level(tag, level).depth <= level.depth
    )
    sources = {_tag_level(tag, level) for tag in tags if tag not in _COMPUTED_TAGS}
    if include_all:
        sources.add(level)
    source_order = tuple(sorted(sources, key=lambda item: item.depth))
    steps = tuple(
        (
            tag,
            _COMPUTED if tag in _COMPUTED_TAGS else source_order.index(_tag_level(tag, level)),
            _empty(tag) if tag in required else None,
            _COMPUTE[tag] if tag in _COMPUTED_TAGS else None,
        )
        for tag in sorted(tags)
    )
    return _Plan(
        tags=tags,
        required=frozenset(required),
        sources=frozenset(sources),
        source_order=source_order,
        steps=steps,
    )


# -- computed attributes, one GROUP BY per page -----------------------------------------------


@dataclass(slots=True)
class _StudyFacts:
    modalities: set[str] = field(default_factory=set)
    sop_classes: set[str] = field(default_factory=set)
    series: int = 0
    instances: int = 0


# The per-page look-ups below are built once, with the page's keys as one parameter:
# building a select with a literal IN list per request cost twice running it. SQLite gets
# an expanding IN list; PostgreSQL one array, "= ANY(:keys)", so that the statement's text
# is the same for every page (psycopg converts it once, and prepares it on the server once
# it is used often) rather than different for every number of keys.


@dataclass(frozen=True, slots=True)
class _PageLookup:
    """One look-up over a page's keys, in the form each dialect runs best.

    The statement is compiled to SQL text once per dialect (and, for SQLite's IN list, per
    number of keys) and sent with ``exec_driver_sql``: through ``execute`` SQLAlchemy
    processed the expanding parameter and the compiled cache on every call, which cost a
    one-study search's look-up 39 µs against 22 (measured on SQLite). The statement events
    still fire, so what is sent can still be captured and explained.
    """

    expanding: Select[Any]
    array: Select[Any]
    texts: dict[tuple[str, int], str] = field(default_factory=dict, compare=False)

    def run(self, session: Executor, keys: Sequence[Any]) -> Any:
        connection = session.connection() if isinstance(session, Session) else session
        dialect = connection.dialect
        if dialect.name == "postgresql":
            return connection.exec_driver_sql(self._text(dialect, 0), {"keys": list(keys)})
        return connection.exec_driver_sql(self._text(dialect, len(keys)), tuple(keys))

    def _text(self, dialect: Dialect, count: int) -> str:
        key = (dialect.name, count)
        found = self.texts.get(key)
        if found is None:
            if dialect.name == "postgresql":
                compiled = self.array.compile(dialect=dialect)
            else:
                compiled = self.expanding.params(keys=[None] * count).compile(
                    dialect=dialect, compile_kwargs={"render_postcompile": True}
                )
            if len(self.texts) >= _LOOKUP_TEXTS:
                self.texts.clear()
            found = self.texts[key] = str(compiled)
        return found


#: SQL texts kept per look-up: one per page size seen on SQLite, so a bound that a few sizes
#: (a client's limit, and the last page's) never reach, and a flood of sizes cannot grow.
_LOOKUP_TEXTS: Final = 256


def _page_lookup(
    build: Callable[[Callable[[Any], ColumnElement[bool]]], Any], item: Any
) -> _PageLookup:
    expanding: BindParameter[Any] = bindparam("keys", expanding=True)
    array: BindParameter[Any] = bindparam("keys", type_=ARRAY(item))
    return _PageLookup(
        expanding=build(lambda column: column.in_(expanding)),
        array=build(lambda column: column == any_(array)),
    )


# One row per (study, modality): a series has one modality, so the per-modality series
# counts add up to the study's, and the instance counts likewise. Counting the join column
# rather than the instance's key gives the same number (it is null exactly when the outer
# join found no instance) but can be read from the series_pk index alone: on PostgreSQL no
# instance row is visited.
_STUDY_COUNTS_BY_MODALITY: Final = _page_lookup(
    lambda among: (
        select(
            Series.study_pk,
            Series.modality,
            func.count(distinct(Series.pk)),
            func.count(Instance.series_pk),
        )
        .outerjoin(Instance, Instance.series_pk == Series.pk)
        .where(among(Series.study_pk))
        .group_by(Series.study_pk, Series.modality)
    ),
    BigInteger,
)
_STUDY_SOP_CLASSES: Final = _page_lookup(
    lambda among: (
        select(Series.study_pk, Instance.sop_class_uid)
        .join(Instance, Instance.series_pk == Series.pk)
        .where(among(Series.study_pk))
        .group_by(Series.study_pk, Instance.sop_class_uid)
    ),
    BigInteger,
)
_SERIES_INSTANCE_COUNTS: Final = _page_lookup(
    lambda among: (
        select(Instance.series_pk, func.count())
        .where(among(Instance.series_pk))
        .group_by(Instance.series_pk)
    ),
    BigInteger,
)
_PATIENT_COUNTS_BY_ID: Final = _page_lookup(
    lambda among: (
        select(
            Study.patient_id,
            func.count(distinct(Study.pk)),
            func.count(distinct(Series.pk)),
            func.count(Instance.series_pk),  # index-only, as in the study counts
        )
        .join(Series, Series.study_pk == Study.pk)
        .join(Instance, Instance.series_pk == Series.pk)
        .where(among(Study.patient_id))
        .group_by(Study.patient_id)
    ),
    String,
)


def _study_facts(
    session: Executor, plan: _Plan, study_pks: Sequence[int]
) -> dict[int, _StudyFacts]:
    facts: dict[int, _StudyFacts] = defaultdict(_StudyFacts)
    if not study_pks:
        return facts
    if plan.wants(*_STUDY_COUNTS):
        rows = _STUDY_COUNTS_BY_MODALITY.run(session, study_pks)
        for study_pk, modality, series_count, instance_count in rows:
            entry = facts[study_pk]
            entry.series += series_count
            entry.instances += instance_count
            if modality:
                entry.modalities.add(modality)
    if plan.wants(_SOP_CLASSES):
        classes = _STUDY_SOP_CLASSES.run(session, study_pks)
        for study_pk, sop_class_uid in classes:
            facts[study_pk].sop_classes.add(sop_class_uid)
    return facts


def _series_instance_counts(session: Executor, series_pks: Sequence[int]) -> dict[int, int]:
    if not series_pks:
        return {}
    rows = _SERIES_INSTANCE_COUNTS.run(session, series_pks)
    return {series_pk: count for series_pk, count in rows}


def _patient_counts(
    session: Executor, patient_ids: Iterable[str | None]
) -> dict[str, tuple[int, int, int]]:
    """Studies, series and instances per Patient ID (the index has no patient entity)."""
    wanted = sorted({pid for pid in patient_ids if pid})
    if not wanted:
        return {}
    rows = _PATIENT_COUNTS_BY_ID.run(session, wanted)
    return {str(pid): (studies, series, instances) for pid, studies, series, instances in rows}


# -- assembling one result -------------------------------------------------------------------


def _attribute(vr: str, values: Sequence[Any]) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _empty(tag: str) -> dict[str, Any]:
    try:
        vr = str(dictionary_VR(int(tag, 16)))
    except KeyError:
        vr = "UN"
    return {"vr": vr.split(" ")[0]}


def _without_bulk(attribute: Any, *, drop_inline: bool) -> Any:
    """`attribute` without bulk data references, or None when it is one (also in items)."""
    if not isinstance(attribute, dict):
        return attribute
    if "BulkDataURI" in attribute or (drop_inline and "InlineBinary" in attribute):
        return None
    if attribute.get("vr") != "SQ" or not attribute.get("Value"):
        return attribute
    items = []
    for item in attribute["Value"]:
        if isinstance(item, dict):
            kept = {}
            for tag, value in item.items():
                cleaned = _without_bulk(value, drop_inline=drop_inline)
                if cleaned is not None:
                    kept[tag] = cleaned
            items.append(kept)
        else:
            items.append(item)
    return {**attribute, "Value": items}


@dataclass(slots=True)
class _Context:
    """Per-page data shared by the results: the plan and the computed attributes."""

    query: ParsedQuery
    plan: _Plan
    base_url: str
    studies: Mapping[int, _StudyFacts]
    series_counts: Mapping[int, int]
    patients: Mapping[str, tuple[int, int, int]]
    # Positions in the page's rows of (primary key, attribute blob) of each plan source.
    source_columns: tuple[tuple[int, int], ...]
    # Parsed attribute blobs by (source, primary key): the instances of one series share
    # their series' and study's blobs, which are then parsed once per page.
    parsed: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)


#: Builds one computed attribute of one result row (None: the entity has no value).
_Compute = Callable[["_Context", Row[Any]], dict[str, Any] | None]


# The page query's first columns are the study's key and UID (see _page_columns): read by
# position, which costs a fraction of a look-up by name, for every row of every page.
_STUDY_PK, _STUDY_UID = 0, 1


def _retrieve_url(context: _Context, row: Row[Any]) -> dict[str, Any] | None:
    url = f"{context.base_url}/studies/{row[_STUDY_UID]}"
    if context.query.level is not QueryLevel.STUDY:
        url += f"/series/{row.series_uid}"
    if context.query.level is QueryLevel.INSTANCE:
        url += f"/instances/{row.sop_uid}"
    return {"vr": "UR", "Value": [url]}


def _availability(_context: _Context, _row: Row[Any]) -> dict[str, Any] | None:
    # Every indexed instance is stored here and retrievable at once: Defined Term ONLINE.
    return {"vr": "CS", "Value": ["ONLINE"]}


def _series_instances(context: _Context, row: Row[Any]) -> dict[str, Any] | None:
    return {"vr": "IS", "Value": [context.series_counts.get(row.series_pk, 0)]}


def _patient_count(index: int) -> _Compute:
    def compute(context: _Context, row: Row[Any]) -> dict[str, Any] | None:
        patient_id = row.patient_id
        counts = context.patients.get(patient_id) if patient_id else None
        return None if counts is None else {"vr": "IS", "Value": [counts[index]]}

    return compute


_NO_FACTS: Final = _StudyFacts()


def _facts(context: _Context, row: Row[Any]) -> _StudyFacts:
    return context.studies.get(row[_STUDY_PK]) or _NO_FACTS


#: How each computed attribute is produced for one result row.
_COMPUTE: Final[dict[str, _Compute]] = {
    _RETRIEVE_URL: _retrieve_url,
    _AVAILABILITY: _availability,
    _SERIES_INSTANCES: _series_instances,
    _PATIENT_STUDIES: _patient_count(0),
    _PATIENT_SERIES: _patient_count(1),
    _PATIENT_INSTANCES: _patient_count(2),
    _MODALITIES: lambda c, r: _attribute("CS", sorted(_facts(c, r).modalities)),
    _SOP_CLASSES: lambda c, r: _attribute("UI", sorted(_facts(c, r).sop_classes)),
    _STUDY_SERIES: lambda c, r: {"vr": "IS", "Value": [_facts(c, r).series]},
    _STUDY_INSTANCES: lambda c, r: {"vr": "IS", "Value": [_facts(c, r).instances]},
}


_SOURCE_COLUMNS: Final = {
    QueryLevel.STUDY: "study_attributes",
    QueryLevel.SERIES: "series_attributes",
    QueryLevel.INSTANCE: "instance_metadata",
}
_KEY_COLUMNS: Final = {
    QueryLevel.STUDY: "study_pk",
    QueryLevel.SERIES: "series_pk",
    QueryLevel.INSTANCE: "instance_pk",
}


def _source(context: _Context, row: Row[Any], index: int) -> dict[str, Any]:
    """The stored DICOM JSON of the row's entity for source `index`, parsed once per page.

    Columns are read by position (found once per page), which is much cheaper per row than
    a lookup by name.
    """
    key_position, blob_position = context.source_columns[index]
    key = (index, row[key_position])
    found = context.parsed.get(key)
    if found is None:
        found = orjson.loads(row[blob_position])
        context.parsed[key] = found
    return found


def _result(context: _Context, row: Row[Any]) -> dict[str, Any]:
    """One result, built by following the plan's steps, which are in tag order.

    Stored attributes are passed through as parsed (only values holding bulk data
    references, or sequences that may hold them in items, are copied and filtered).
    """
    plan = context.plan
    sources = [_source(context, row, index) for index in range(len(plan.source_order))]
    result: dict[str, Any] = {}
    if context.query.include_all:
        for tag, value in sources[plan.source_order.index(context.query.level)].items():
            cleaned = _without_bulk(value, drop_inline=True)
            if cleaned is not None:
                result[tag] = cleaned
    for tag, source, empty, compute in plan.steps:
        if compute is not None:
            value = compute(context, row)
        else:
            value = sources[source].get(tag)
            if value is not None and (
                type(value) is not dict or "BulkDataURI" in value or value.get("vr") == "SQ"
            ):
                value = _without_bulk(value, drop_inline=False)
        if value is not None:
            result[tag] = value
        elif empty is not None:
            result[tag] = dict(empty)
    # The steps are in tag order; only the attributes of includefield=all come unordered.
    return dict(sorted(result.items())) if context.query.include_all else result


# -- the search ------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """One page of QIDO-RS results.

    Attributes
    ----------
    items : list of dict
        DICOM JSON datasets (PS3.18 Annex F), one per match, attributes in tag order.
        Results of one page may share attribute objects (a study's attributes in the
        results of its instances): treat them as read-only.
    remaining : int or None
        Matches beyond ``offset + len(items)``; 0 when the page is the last.
    warnings : list of str
        Texts for ``Warning: 299 <service>: <text>`` headers (PS3.18 8.3.4.4).
    """

    items: list[dict[str, Any]]
    remaining: int | None
    warnings: list[str]


_PRIMARY_KEYS: Final = {
    QueryLevel.STUDY: Study.pk,
    QueryLevel.SERIES: Series.pk,
    QueryLevel.INSTANCE: Instance.pk,
}


@functools.lru_cache(maxsize=512)
def _page_columns(
    level: QueryLevel, source_order: tuple[QueryLevel, ...], patient_counts: bool
) -> tuple[tuple[Any, ...], tuple[tuple[int, int], ...]]:
    """The page query's columns, and where each source's key and stored JSON are among them
    (by position): built once per shape, not per request."""
    columns: list[Any] = [
        Study.pk.label("study_pk"),
        Study.study_instance_uid.label("study_uid"),
    ]
    if patient_counts:
        columns.append(Study.patient_id.label("patient_id"))
    if level is not QueryLevel.STUDY:
        columns += [Series.pk.label("series_pk"), Series.series_instance_uid.label("series_uid")]
    if level is QueryLevel.INSTANCE:
        columns += [Instance.pk.label("instance_pk"), Instance.sop_instance_uid.label("sop_uid")]
    blobs = {
        QueryLevel.STUDY: Study.attributes,
        QueryLevel.SERIES: Series.attributes,
        QueryLevel.INSTANCE: Instance.metadata_json,
    }
    for source in source_order:
        columns.append(blobs[source].label(_SOURCE_COLUMNS[source]))
    names = [column.key for column in columns]
    assert names[_STUDY_PK] == "study_pk" and names[_STUDY_UID] == "study_uid"
    positions = tuple(
        (names.index(_KEY_COLUMNS[source]), names.index(_SOURCE_COLUMNS[source]))
        for source in source_order
    )
    return tuple(columns), positions


#: A search counted to at most this many matches reads them through the matching key's
#: index and sorts them: fewer rows than walking the primary key to find a page of them,
#: unless they are dense in the table.
FILTER_FIRST_MAX_ROWS: Final = 2000


def _estimate_prone(query: ParsedQuery) -> bool:
    """Whether the query has a condition whose match count the planner may misjudge.

    Patterns (``Doe^J*``), ranges and fuzzy names are estimated from histograms, which can
    be wrong by ten times either way for any one value; equality on a UID, an ID or an
    accession number is estimated from the number of distinct values, and ModalitiesInStudy
    and SOPClassesInStudy are semi-joins read in primary key order from both sides.
    """
    for condition in query.conditions:
        if condition.key.via is not Via.COLUMN:
            continue
        matcher = condition.matcher
        if isinstance(matcher, FuzzyNameMatch):
            return True
        if isinstance(matcher, RangeMatch) and (
            matcher.lower is None or matcher.lower != matcher.upper
        ):
            return True
        if isinstance(matcher, ValueMatch) and any(
            "*" in pattern or "?" in pattern for pattern in matcher.patterns
        ):
            return True
    return False


# Statements are built once per shape of query (its conditions' shape and what the page
# selects) and run with the query's values as parameters: building a select and computing
# its cache key cost a simple search about as much as running it. SQLAlchemy keeps each
# statement's cache key once computed, so a repeated shape goes straight to its compiled
# form. Limit and offset are parameters too.


@functools.lru_cache(maxsize=512)
def _where(conditions: tuple[Shape, ...]) -> tuple[ColumnElement[bool], ...]:
    return tuple(shape_clauses(conditions))


@functools.lru_cache(maxsize=512)
def _count_statement(level: QueryLevel, conditions: tuple[Shape, ...]) -> Select[Any]:
    """The COUNT behind the pagination warning: all matches, not just the page.

    A study search by ModalitiesInStudy alone is the broadest common search (a worklist's
    "all CT studies"). As a semi-join of ``studies`` it reads every study's primary key to
    count the matches; the same number is the count of distinct studies among the matching
    series, which PostgreSQL and SQLite read off ``ix_series_modality_study_pk`` alone: at
    100,000 studies about 5x less work. Any other condition (or a patient-scoped token)
    keeps the general form: the path's study UID and a token's patient are conditions of
    the shape too.
    """
    if level is QueryLevel.STUDY and len(conditions) == 1 and conditions[0][0] == "modalities":
        return modalities_study_count(conditions[0])
    return select_level(level, _where(conditions), func.count())


_LIMIT: Final = bindparam("page_limit", type_=Integer())
_OFFSET: Final = bindparam("page_offset", type_=Integer())


@functools.lru_cache(maxsize=512)
def _page_statement(
    level: QueryLevel, conditions: tuple[Shape, ...], columns: tuple[Any, ...], filter_first: bool
) -> Select[Any]:
    key = _PRIMARY_KEYS[level]
    # "pk + 0" orders the same but cannot be read off the primary key's index.
    return (
        select_level(level, _where(conditions), *columns)
        .order_by(key + literal_column("0") if filter_first else key)
        .limit(_LIMIT)
        .offset(_OFFSET)
    )


def search(session: Executor, query: ParsedQuery, *, base_url: str) -> SearchResult:
    """Run a parsed QIDO-RS search and build its page of DICOM JSON results.

    Parameters
    ----------
    session : Session or Connection
        An open index session or connection; only read (a plain connection costs less).
    query : ParsedQuery
        From :func:`parse_query`.
    base_url : str
        The absolute DICOMweb root as the client sees it, for Retrieve URL (0008,1190),
        which PS3.18 10.6.3.3 requires to be usable by the client.

    Returns
    -------
    SearchResult

    Notes
    -----
    Results are ordered by the level's primary key (insertion order), so ``offset`` pages
    are stable while nothing is deleted. The page query fetches ``limit + 1`` rows: only
    when the extra row exists is a COUNT run for the exact number remaining. Computed
    attributes (counts, Modalities in Study, SOP Classes in Study) are one GROUP BY query
    each over the page's studies or series, so a study search costs 2 queries (3 with
    SOP Classes in Study, +1 COUNT when more results remain), never one per result.
    """
    plan = _plan(query)
    shape: QueryShape = query_shape(query)
    values = shape.parameters()
    columns, source_columns = _page_columns(
        query.level, plan.source_order, plan.wants(*_PATIENT_COUNTS)
    )
    # A pattern or range can match few rows while the planner expects many; it then walks
    # the primary key in order, filtering, to fill the page, and reads the whole table when
    # fewer than a page match (measured: 50 ms at 100,000 studies, growing with the index).
    # Such searches are counted first, and a count that few are read through the matching
    # key's own index and sorted. The count is the one the pagination warning needs anyway.
    count = _count_statement(query.level, shape.conditions)
    total = session.scalar(count, values) if _estimate_prone(query) else None
    filter_first = total is not None and total <= FILTER_FIRST_MAX_ROWS
    page = _page_statement(query.level, shape.conditions, columns, filter_first)
    page_values = {**values, "page_limit": query.limit + 1, "page_offset": query.offset}
    rows = list(session.execute(page, page_values).all()) if total != 0 else []
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    remaining = 0
    if more:
        if total is None:
            total = session.scalar(count, values)
        remaining = max(int(total or 0) - query.offset - len(rows), 1)

    study_pks = sorted({row.study_pk for row in rows})
    series_pks = (
        sorted({row.series_pk for row in rows})
        if query.level is not QueryLevel.STUDY and plan.wants(_SERIES_INSTANCES)
        else []
    )
    context = _Context(
        query=query,
        plan=plan,
        base_url=base_url.rstrip("/"),
        studies=_study_facts(session, plan, study_pks),
        series_counts=_series_instance_counts(session, series_pks),
        patients=(
            _patient_counts(session, (row._mapping.get("patient_id") for row in rows))
            if plan.wants(*_PATIENT_COUNTS)
            else {}
        ),
        source_columns=source_columns,
    )
    warnings = list(query.warnings)
    if remaining:
        # PS3.18 8.3.4.4 (Response Pagination).
        warnings.append(f"There are {remaining} additional results that can be requested")
    return SearchResult(
        items=[_result(context, row) for row in rows],
        remaining=remaining,
        warnings=warnings,
    )
