"""QIDO-RS conditions as SQL over the index tables, portable between SQLite and PostgreSQL.

Everything matched is a normalised column (see :mod:`dicomweb_server.index.records`), so
matching is plain comparison plus one dialect-aware construct, :class:`WildcardMatch`, for
the case-sensitive wild cards of PS3.4 C.2.2.2.4.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import (
    BindParameter,
    Boolean,
    ColumnElement,
    Select,
    String,
    and_,
    bindparam,
    distinct,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute, aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from dicomweb_server.index.models import Instance, Series, SeriesRequest, Study
from dicomweb_server.index.qido_keys import (
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
    "QueryShape",
    "WildcardMatch",
    "modalities_study_count",
    "query_shape",
    "select_level",
    "shape_clauses",
]

Column = QueryableAttribute[Any] | ColumnElement[Any]


# -- dialect-aware wild card matching ------------------------------------------------------


class WildcardMatch(FunctionElement[bool]):
    """``column`` matches a DICOM wild card pattern, case-sensitively, on any dialect.

    PS3.4 C.2.2.2.4 wild card matching is case-sensitive, but SQLite's LIKE folds ASCII
    case, so SQLite uses GLOB; PostgreSQL (and anything else) uses LIKE with an escape
    character. Both translations are bound as parameters (two slots of the query's shape);
    compilation picks the one its dialect uses.
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

# -- query shapes ----------------------------------------------------------------------------
#
# A search's SQL depends on which keys it matches and how (a wild card or not, one value or
# several, which bounds), not on the values. Building and cache-keying the statement cost a
# simple search as much as running it, so the conditions are first reduced to a *shape*: a
# nested tuple that names the SQL to build, with numbered slots where the values go. The
# statements are built once per shape (callers cache them) and run with the values bound.
# The SQL sent is the same as when the values were built in: only their names differ.
#
# Shape nodes:
#   ("eq" | "ge" | "le", column, slot)     comparison with one value
#   ("in", column, slot)                   IN a list (an expanding parameter)
#   ("wild", column, glob slot, like slot) WildcardMatch
#   ("null" | "null_or_empty", column)     Empty Value Matching
#   ("or" | "and", node, node, ...)        two or more nodes
#   ("items", node, ...)                   some request item of the series matches all
#   ("modalities" | "sop_classes", node)   some series / instance of the study matches
#   ("no_modalities" | "no_sop_classes",)  no series / instance of the study has a value
# where column is a key of _COLUMNS (a tag path).

Shape = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class QueryShape:
    """The conditions of a search, reduced to their shape, and the values for its slots."""

    conditions: tuple[Shape, ...]
    values: tuple[Any, ...]

    def parameters(self) -> dict[str, Any]:
        """The values by the names of the parameters :func:`shape_clauses` built."""
        return {_slot_name(index): value for index, value in enumerate(self.values)}


def _slot_name(index: int) -> str:
    return f"v{index}"


class _Shaper:
    """Collects values into numbered slots while a query is reduced to its shape."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def slot(self, value: Any) -> int:
        self.values.append(value)
        return len(self.values) - 1

    def wild(self, column: str, pattern: str) -> Shape:
        glob, like = self.slot(_glob_pattern(pattern)), self.slot(_like_pattern(pattern))
        return ("wild", column, glob, like)

    def pattern(self, column: str, pattern: str, *, person_name: bool) -> Shape:
        wild = "*" in pattern or "?" in pattern
        node = self.wild(column, pattern) if wild else ("eq", column, self.slot(pattern))
        if person_name and "=" not in pattern and not pattern.endswith("*"):
            # "Doe^John" also matches "Doe^John=山田^太郎": the query names the alphabetic
            # group. A pattern ending in "*" already matches the other groups; a second LIKE
            # would only make the planner combine two index scans for the same rows.
            node = ("or", node, self.wild(column, pattern + "=*"))
        return node

    def word_prefix(self, column: str, token: str) -> Shape:
        starts = [self.wild(column, token + "*")]
        starts += [self.wild(column, f"*{sep}{token}*") for sep in _NAME_SEPARATORS]
        return ("or", *starts)

    def matcher(self, column: str, kind: MatchKind, matcher: Matcher) -> Shape:
        """The shape of one matcher on one column (PS3.4 C.2.2.2)."""
        if isinstance(matcher, EmptyValueMatch):
            return ("null" if kind is MatchKind.INTEGER else "null_or_empty", column)
        if isinstance(matcher, ValueMatch):
            person_name = kind is MatchKind.PERSON_NAME
            return _any(
                [self.pattern(column, p, person_name=person_name) for p in matcher.patterns]
            )
        if isinstance(matcher, FuzzyNameMatch):
            return _any(
                [
                    _all([self.word_prefix(column, token) for token in tokens])
                    for tokens in matcher.alternatives
                ]
            )
        if isinstance(matcher, UidListMatch | IntegerMatch):
            values = matcher.uids if isinstance(matcher, UidListMatch) else matcher.values
            if len(values) == 1:
                return ("eq", column, self.slot(values[0]))
            return ("in", column, self.slot(list(values)))
        if matcher.lower is not None and matcher.lower == matcher.upper:
            return ("eq", column, self.slot(matcher.lower))
        bounds: list[Shape] = []
        if matcher.lower is not None:
            bounds.append(("ge", column, self.slot(matcher.lower)))
        if matcher.upper is not None:
            bounds.append(("le", column, self.slot(matcher.upper)))
        return _all(bounds)


def _any(nodes: list[Shape]) -> Shape:
    return nodes[0] if len(nodes) == 1 else ("or", *nodes)


def _all(nodes: list[Shape]) -> Shape:
    return nodes[0] if len(nodes) == 1 else ("and", *nodes)


_MODALITY, _SOP_CLASS = "00080060", "00080016"


def query_shape(query: ParsedQuery) -> QueryShape:
    """All conditions of the query as one shape, with the values of its slots.

    Keys on other entities (modalities and SOP classes of a study, request items of a
    series) become semi-joins (``pk IN (SELECT ...)`` or EXISTS), so a study with several
    matching series still yields one row and pagination counts entities, not join rows.
    """
    shaper = _Shaper()
    nodes: list[Shape] = []
    if query.patient_id is not None:
        nodes.append(("eq", "00100020", shaper.slot(query.patient_id)))
    if query.study_uid is not None:
        nodes.append(("eq", "0020000D", shaper.slot(query.study_uid)))
    if query.series_uid is not None:
        nodes.append(("eq", "0020000E", shaper.slot(query.series_uid)))
    items: list[Shape] = []
    for condition in query.conditions:
        key, matcher = condition.key, condition.matcher
        if key.via is Via.COLUMN:
            nodes.append(shaper.matcher(key.path, key.kind, matcher))
        elif key.via is Via.REQUEST_ITEM:
            items.append(shaper.matcher(key.path, key.kind, matcher))
        elif key.via is Via.MODALITIES:
            if isinstance(matcher, EmptyValueMatch):
                nodes.append(("no_modalities",))
            else:
                nodes.append(("modalities", shaper.matcher(_MODALITY, key.kind, matcher)))
        elif isinstance(matcher, EmptyValueMatch):
            nodes.append(("no_sop_classes",))
        else:
            nodes.append(("sop_classes", shaper.matcher(_SOP_CLASS, key.kind, matcher)))
    if items:
        # PS3.4 C.2.2.2.6: all item keys must match within one item of the sequence.
        nodes.append(("items", *items))
    return QueryShape(tuple(nodes), tuple(shaper.values))


# -- shapes as SQL ---------------------------------------------------------------------------

# The series and instances of a study searched by ModalitiesInStudy or SOPClassesInStudy.
# Aliased once: building an alias of a mapped class proxies every one of its columns, which
# cost a broad study search more than running its statements. A search with both keys uses
# the alias in two subqueries, which is valid SQL: each subquery has its own FROM scope.
_STUDY_SERIES: Final = aliased(Series)
_STUDY_INSTANCES: Final = aliased(Instance)
_IN_STUDY_COLUMNS: Final[dict[str, Column]] = {
    _MODALITY: _STUDY_SERIES.modality,
    _SOP_CLASS: _STUDY_INSTANCES.sop_class_uid,
}


def _parameter(slot: int, **kw: Any) -> BindParameter[Any]:
    return bindparam(_slot_name(slot), **kw)


def _clause(node: Shape, columns: Mapping[str, Column]) -> ColumnElement[bool]:
    """One shape node as SQL; `columns` resolves the tag paths its leaves name."""
    op = node[0]
    if op == "eq":
        return columns[node[1]] == _parameter(node[2])
    if op == "in":
        return columns[node[1]].in_(_parameter(node[2], expanding=True))
    if op == "ge":
        return columns[node[1]] >= _parameter(node[2])
    if op == "le":
        return columns[node[1]] <= _parameter(node[2])
    if op == "wild":
        return WildcardMatch(
            columns[node[1]],
            _parameter(node[2], type_=String()),
            _parameter(node[3], type_=String()),
        )
    if op == "null":
        return columns[node[1]].is_(None)
    if op == "null_or_empty":
        column = columns[node[1]]
        return or_(column.is_(None), column == "")
    if op == "or":
        return or_(*(_clause(child, columns) for child in node[1:]))
    if op == "and":
        return and_(*(_clause(child, columns) for child in node[1:]))
    if op == "items":
        children = (_clause(child, columns) for child in node[1:])
        return exists().where(SeriesRequest.series_pk == Series.pk, *children)
    series, item = _STUDY_SERIES, _STUDY_INSTANCES
    if op == "modalities":
        # "pk IN (studies having such a series)" rather than a correlated EXISTS: both are a
        # semi-join to PostgreSQL, but SQLite evaluates EXISTS once per candidate study,
        # which makes the COUNT of a broad search (every study probed) ten times slower
        # than reading the matching studies off ix_series_modality_study_pk once.
        matched = _clause(node[1], _IN_STUDY_COLUMNS)
        return Study.pk.in_(select(series.study_pk).where(matched))
    if op == "no_modalities":
        return ~exists().where(series.study_pk == Study.pk, series.modality.is_not(None))
    if op == "sop_classes":
        matched = _clause(node[1], _IN_STUDY_COLUMNS)
        return exists().where(item.series_pk == series.pk, series.study_pk == Study.pk, matched)
    if op == "no_sop_classes":
        return ~exists().where(item.series_pk == series.pk, series.study_pk == Study.pk)
    raise ValueError(f"unknown query shape node {op!r}")


def shape_clauses(conditions: tuple[Shape, ...]) -> list[ColumnElement[bool]]:
    """The conditions of a shape over ``studies`` / ``series`` / ``instances``, with
    parameters named for :meth:`QueryShape.parameters` (usable in the page query and in
    the COUNT alike)."""
    return [_clause(node, _COLUMNS) for node in conditions]


def modalities_study_count(node: Shape) -> Select[Any]:
    """COUNT of the studies some series of which matches a ``("modalities", ...)`` node.

    The same number as counting the node's semi-join over ``studies``, read from the series
    index alone (see ``qido._count_statement`` for when it applies).
    """
    if node[0] != "modalities":
        raise ValueError("not a ModalitiesInStudy condition")
    sql = _clause(node[1], _COLUMNS)
    return select(func.count(distinct(Series.study_pk))).where(sql)


def select_level(
    level: QueryLevel, clauses: Sequence[ColumnElement[bool]], *columns: Any
) -> Select[Any]:
    """SELECT `columns` from the searched level's table joined to its parents, filtered.

    One row per entity of the level: parents are joined many-to-one, never children, so
    LIMIT / OFFSET and COUNT count results (PS3.18 8.3.4.4).
    """
    statement = select(*columns)
    if level is QueryLevel.STUDY:
        statement = statement.select_from(Study)
    elif level is QueryLevel.SERIES:
        statement = statement.select_from(Series).join(Study, Series.study_pk == Study.pk)
    else:
        statement = (
            statement.select_from(Instance)
            .join(Series, Instance.series_pk == Series.pk)
            .join(Study, Series.study_pk == Study.pk)
        )
    return statement.where(*clauses)
