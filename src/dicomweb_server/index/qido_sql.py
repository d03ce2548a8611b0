"""QIDO-RS conditions as SQL over the index tables, portable between SQLite and PostgreSQL.

Everything matched is a normalised column (see :mod:`dicomweb_server.index.records`), so
matching is plain comparison plus one dialect-aware construct, :class:`WildcardMatch`, for
the case-sensitive wild cards of PS3.4 C.2.2.2.4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Select,
    String,
    and_,
    distinct,
    exists,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute, aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from dicomweb_server.index.models import Instance, Series, SeriesRequest, Study
from dicomweb_server.index.qido_keys import (
    Condition,
    EmptyValueMatch,
    FuzzyNameMatch,
    IntegerMatch,
    Matcher,
    MatchKind,
    ParsedQuery,
    QueryLevel,
    UidListMatch,
    ValueMatch,
    Via,
)

__all__ = [
    "WildcardMatch",
    "modalities_study_count",
    "select_level",
    "where_clauses",
    "wildcard_match",
]

Column = QueryableAttribute[Any] | ColumnElement[Any]


# -- dialect-aware wild card matching ------------------------------------------------------


class WildcardMatch(FunctionElement[bool]):
    """``column`` matches a DICOM wild card pattern, case-sensitively, on any dialect.

    PS3.4 C.2.2.2.4 wild card matching is case-sensitive, but SQLite's LIKE folds ASCII
    case, so SQLite uses GLOB; PostgreSQL (and anything else) uses LIKE with an escape
    character. Both translations are bound as parameters so that the statement cache keys
    on them; compilation picks the one its dialect uses.
    """

    type = Boolean()
    name = "wildcard_match"
    inherit_cache = True
    # A comparison, not a boolean value: without this, dialects lacking a native boolean
    # (SQLite) render "x GLOB ? = 1", which defeats SQLite's GLOB-prefix index optimisation.
    _is_implicitly_boolean = True


def _glob_pattern(pattern: str) -> str:
    # In GLOB only "[" opens a special construct among the characters DICOM values may hold
    # besides the wild cards themselves ("]" outside a bracket is literal).
    return pattern.replace("[", "[[]")


def _like_pattern(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def wildcard_match(column: Column, pattern: str) -> WildcardMatch:
    """A condition that `column` matches `pattern` (``*`` any sequence, ``?`` one character).

    Parameters
    ----------
    column : column expression
        A string column.
    pattern : str
        The pattern in DICOM syntax; every other character is literal.
    """
    return WildcardMatch(
        column,
        literal(_glob_pattern(pattern), String()),
        literal(_like_pattern(pattern), String()),
    )


@compiles(WildcardMatch)
def _compile_like(element: WildcardMatch, compiler: SQLCompiler, **kw: Any) -> str:
    column, _glob, like = element.clauses.clauses
    return compiler.process(column.like(like, escape="\\"), **kw)


@compiles(WildcardMatch, "sqlite")
def _compile_glob(element: WildcardMatch, compiler: SQLCompiler, **kw: Any) -> str:
    column, glob, _like = element.clauses.clauses
    return compiler.process(column.op("GLOB")(glob), **kw)


# -- where each key is matched -------------------------------------------------------------

_COLUMNS: Final[dict[str, QueryableAttribute[Any]]] = {
    "00080020": Study.study_date,
    "00080030": Study.study_time,
    "00080050": Study.accession_number,
    "00080090": Study.referring_physician_name,
    "00081030": Study.study_description,
    "00100010": Study.patient_name,
    "00100020": Study.patient_id,
    "00100030": Study.patient_birth_date,
    "00100040": Study.patient_sex,
    "0020000D": Study.study_instance_uid,
    "00200010": Study.study_id,
    "00080021": Series.series_date,
    "00080031": Series.series_time,
    "00080060": Series.modality,
    "0008103E": Series.series_description,
    "00180015": Series.body_part_examined,
    "0020000E": Series.series_instance_uid,
    "00200011": Series.series_number,
    "00400244": Series.performed_procedure_step_start_date,
    "00400245": Series.performed_procedure_step_start_time,
    "00400275.00080050": SeriesRequest.accession_number,
    "00400275.00400009": SeriesRequest.scheduled_procedure_step_id,
    "00400275.00401001": SeriesRequest.requested_procedure_id,
    "00080016": Instance.sop_class_uid,
    "00080018": Instance.sop_instance_uid,
    "00080023": Instance.content_date,
    "00080033": Instance.content_time,
    "0008002A": Instance.acquisition_datetime,
    "00200013": Instance.instance_number,
}

# Word boundaries inside a normalised person name, for fuzzy prefix matching.
_NAME_SEPARATORS: Final = ("^", "=", " ", "-")


def _pattern(column: Column, pattern: str, *, person_name: bool) -> ColumnElement[bool]:
    wild = "*" in pattern or "?" in pattern
    condition: ColumnElement[bool] = (
        wildcard_match(column, pattern) if wild else (column == pattern)
    )
    if person_name and "=" not in pattern and not pattern.endswith("*"):
        # "Doe^John" also matches "Doe^John=山田^太郎": the query names the alphabetic group.
        # A pattern ending in "*" already matches the other groups; a second LIKE would only
        # make the planner combine two index scans for the same rows.
        condition = or_(condition, wildcard_match(column, pattern + "=*"))
    return condition


def _word_prefix(column: Column, token: str) -> ColumnElement[bool]:
    starts = [wildcard_match(column, token + "*")]
    starts += [wildcard_match(column, f"*{sep}{token}*") for sep in _NAME_SEPARATORS]
    return or_(*starts)


def _matcher_sql(column: Column, kind: MatchKind, matcher: Matcher) -> ColumnElement[bool]:
    """The SQL condition for one matcher on one column (PS3.4 C.2.2.2)."""
    if isinstance(matcher, EmptyValueMatch):
        if kind is MatchKind.INTEGER:
            return column.is_(None)
        return or_(column.is_(None), column == "")
    if isinstance(matcher, ValueMatch):
        person_name = kind is MatchKind.PERSON_NAME
        return or_(*(_pattern(column, p, person_name=person_name) for p in matcher.patterns))
    if isinstance(matcher, FuzzyNameMatch):
        return or_(
            *(
                and_(*(_word_prefix(column, token) for token in tokens))
                for tokens in matcher.alternatives
            )
        )
    if isinstance(matcher, UidListMatch):
        uids = matcher.uids
        return column == uids[0] if len(uids) == 1 else column.in_(uids)
    if isinstance(matcher, IntegerMatch):
        values = matcher.values
        return column == values[0] if len(values) == 1 else column.in_(values)
    if matcher.lower is not None and matcher.lower == matcher.upper:
        return column == matcher.lower
    bounds = []
    if matcher.lower is not None:
        bounds.append(column >= matcher.lower)
    if matcher.upper is not None:
        bounds.append(column <= matcher.upper)
    return and_(*bounds)


def where_clauses(query: ParsedQuery) -> list[ColumnElement[bool]]:
    """All conditions of the query, over ``studies`` / ``series`` / ``instances``.

    Parameters
    ----------
    query : ParsedQuery
        The search; its path UIDs and conditions are combined with AND.

    Returns
    -------
    list of ColumnElement
        Conditions for :func:`select_level` (built once, usable in the page query and in
        the COUNT alike).

    Notes
    -----
    Keys on other entities (modalities and SOP classes of a study, request items of a
    series) become semi-joins (``pk IN (SELECT ...)`` or EXISTS), so a study with several
    matching series still yields one row and pagination counts entities, not join rows.
    """
    clauses: list[ColumnElement[bool]] = []
    if query.patient_id is not None:
        clauses.append(Study.patient_id == query.patient_id)
    if query.study_uid is not None:
        clauses.append(Study.study_instance_uid == query.study_uid)
    if query.series_uid is not None:
        clauses.append(Series.series_instance_uid == query.series_uid)
    item_conditions: list[ColumnElement[bool]] = []
    for condition in query.conditions:
        key = condition.key
        if key.via is Via.COLUMN:
            clauses.append(_matcher_sql(_COLUMNS[key.path], key.kind, condition.matcher))
        elif key.via is Via.REQUEST_ITEM:
            item_conditions.append(_matcher_sql(_COLUMNS[key.path], key.kind, condition.matcher))
        else:
            clauses.append(_study_exists(condition))
    if item_conditions:
        # PS3.4 C.2.2.2.6: all item keys must match within one item of the sequence.
        clauses.append(exists().where(SeriesRequest.series_pk == Series.pk, *item_conditions))
    return clauses


# The series and instances of a study searched by ModalitiesInStudy or SOPClassesInStudy.
# Aliased once: building an alias of a mapped class proxies every one of its columns, which
# cost a broad study search more than running its statements. A search with both keys uses
# the alias in two subqueries, which is valid SQL: each subquery has its own FROM scope.
_STUDY_SERIES: Final = aliased(Series)
_STUDY_INSTANCES: Final = aliased(Instance)


def _study_exists(condition: Condition) -> ColumnElement[bool]:
    """ModalitiesInStudy / SOPClassesInStudy: some series / instance of the study matches."""
    other = _STUDY_SERIES
    empty = isinstance(condition.matcher, EmptyValueMatch)
    if condition.key.via is Via.MODALITIES:
        if empty:
            return ~exists().where(other.study_pk == Study.pk, other.modality.is_not(None))
        sql = _matcher_sql(other.modality, condition.key.kind, condition.matcher)
        # "pk IN (studies having such a series)" rather than a correlated EXISTS: both are a
        # semi-join to PostgreSQL, but SQLite evaluates EXISTS once per candidate study,
        # which makes the COUNT of a broad search (every study probed) ten times slower
        # than reading the matching studies off ix_series_modality_study_pk once.
        return Study.pk.in_(select(other.study_pk).where(sql))
    item = _STUDY_INSTANCES
    if empty:
        return ~exists().where(item.series_pk == other.pk, other.study_pk == Study.pk)
    sql = _matcher_sql(item.sop_class_uid, condition.key.kind, condition.matcher)
    return exists().where(item.series_pk == other.pk, other.study_pk == Study.pk, sql)


def modalities_study_count(condition: Condition) -> Select[Any]:
    """COUNT of the studies some series of which matches a ModalitiesInStudy condition.

    The same number as counting :func:`_study_exists`'s semi-join over ``studies``, read from
    the series index alone (see ``qido._count_statement`` for when it applies).
    """
    sql = _matcher_sql(Series.modality, condition.key.kind, condition.matcher)
    return select(func.count(distinct(Series.study_pk))).where(sql)


def select_level(
    query: ParsedQuery, clauses: Sequence[ColumnElement[bool]], *columns: Any
) -> Select[Any]:
    """SELECT `columns` from the searched level's table joined to its parents, filtered.

    One row per entity of the level: parents are joined many-to-one, never children, so
    LIMIT / OFFSET and COUNT count results (PS3.18 8.3.4.4).
    """
    statement = select(*columns)
    if query.level is QueryLevel.STUDY:
        statement = statement.select_from(Study)
    elif query.level is QueryLevel.SERIES:
        statement = statement.select_from(Series).join(Study, Series.study_pk == Study.pk)
    else:
        statement = (
            statement.select_from(Instance)
            .join(Series, Instance.series_pk == Series.pk)
            .join(Study, Series.study_pk == Study.pk)
        )
    return statement.where(*clauses)
