"""Every default QIDO-RS matching key is served by an index on a large PostgreSQL index.

The schema comes from the real migrations, the rows from :mod:`tests.integration.large_index`
(100,000 studies). Each search runs through :func:`dicomweb_server.index.qido.search`; every
statement it sends is captured with its bound parameters and explained, so the plans checked
are those of the SQL the archive really emits (page, COUNT and computed attributes alike).

The database is a fresh one with an ICU ``en-US`` default collation, as production databases
have a language collation rather than C: under C a default B-tree also serves ``LIKE
'prefix%'``, which would hide a missing ``text_pattern_ops`` index. Without the privilege to
create databases, a fresh schema of the test database is used instead.

Query times are printed, not asserted (``pytest -rP`` or ``-s`` shows them).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from dicomweb_server.index.database import alembic_config, create_index_engine, postgresql_url
from dicomweb_server.index.qido import QueryLevel, SearchResult, parse_query, search
from dicomweb_server.settings import Settings
from tests.conftest import POSTGRES_URL, _drop_postgres_schema, _postgres_schema_url
from tests.integration.large_index import (
    SyntheticSeries,
    SyntheticStudy,
    fill,
    synthetic_studies,
)
from tests.integration.plans import plan_nodes

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not POSTGRES_URL, reason="DICOMWEB_TEST_DATABASE_URL is not set"),
]

STUDIES = 100_000
STUDY, SERIES, INSTANCE = QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.INSTANCE
INDEX_NODES = frozenset({"Index Scan", "Index Only Scan", "Bitmap Index Scan"})
SEARCHED_TABLES = frozenset({"studies", "series", "series_requests", "instances"})


# -- the database ---------------------------------------------------------------------------


@dataclass
class LargeIndex:
    engine: Engine
    studies: tuple[SyntheticStudy, ...]
    collation: str
    indexes: set[str]
    fill_seconds: float
    upgrade_seconds: float

    def acceptable(self, wanted: frozenset[str]) -> frozenset[str]:
        """`wanted`, plus the plain indexes that serve LIKE 'prefix%' too under C collation."""
        if self.collation in ("C", "POSIX") or self.collation.startswith("C."):
            return wanted | {_C_ALTERNATIVES[name] for name in wanted if name in _C_ALTERNATIVES}
        return wanted


# The database's default collation (its ICU locale when it has one; the column was renamed
# in PostgreSQL 17, hence the JSON detour).
_COLLATION = """
    SELECT coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale', d.datcollate)
    FROM pg_database AS d WHERE d.datname = current_database()
"""
_INDEXES = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
_C_ALTERNATIVES = {
    "ix_studies_patient_name_text": "ix_studies_patient_name",
    "ix_studies_accession_number_trgm": "ix_studies_accession_number",
}


def _create_database(base_url: str) -> str | None:
    """A new database with a language collation, or None when this role may not create one."""
    name = f"dicomweb_plans_{secrets.token_hex(4)}"
    admin = create_engine(postgresql_url(base_url), isolation_level="AUTOCOMMIT")
    variants = (
        "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'",  # PostgreSQL 15+
        "LC_COLLATE 'en_US.UTF-8' LC_CTYPE 'en_US.UTF-8'",
    )
    try:
        with admin.connect() as connection:
            for variant in variants:
                try:
                    connection.exec_driver_sql(
                        f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' {variant}"
                    )
                except DBAPIError:
                    continue
                return make_url(base_url).set(database=name).render_as_string(False)
    finally:
        admin.dispose()
    return None


def _drop_database(base_url: str, url: str) -> None:
    admin = create_engine(postgresql_url(base_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        name = make_url(url).database
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="module")
def large_index() -> Iterator[LargeIndex]:
    """The synthetic archive, migrated as a real one is: rows first, then this revision.

    Filling the tables as they were before revision 0003 and upgrading afterwards builds its
    indexes in bulk (faster than maintaining them row by row) and is what happens when an
    archive in use is upgraded; later revisions, if any, follow the same way.
    """
    assert POSTGRES_URL
    url = _create_database(POSTGRES_URL)
    schema = None
    if url is None:
        url, schema = _postgres_schema_url(POSTGRES_URL)
    engine = create_index_engine(url)
    config = alembic_config(url)
    before = ScriptDirectory.from_config(config).get_revision("0003").down_revision
    try:
        command.upgrade(config, str(before))
        started = time.perf_counter()
        with engine.begin() as connection:
            fill(connection, STUDIES)
        filled = time.perf_counter()
        command.upgrade(config, "head")
        upgraded = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE studies, series, series_requests, instances")
            collation = str(connection.scalar(text(_COLLATION)))
            indexes = set(connection.scalars(text(_INDEXES)))
        yield LargeIndex(
            engine,
            synthetic_studies(STUDIES),
            collation,
            indexes,
            fill_seconds=filled - started,
            upgrade_seconds=upgraded - filled,
        )
    finally:
        engine.dispose()
        if schema is None:
            _drop_database(POSTGRES_URL, url)
        else:
            _drop_postgres_schema(POSTGRES_URL, schema)


# -- the searches ---------------------------------------------------------------------------

StudyTest = Callable[[SyntheticStudy], bool]
SeriesTest = Callable[[SyntheticStudy, SyntheticSeries], bool]


@dataclass(frozen=True)
class Case:
    """One search, the indexes that must serve it, and the rows it must return."""

    name: str
    level: QueryLevel
    params: dict[str, str]
    #: The page query (and the COUNT, when one runs) must scan one of these.
    indexes: frozenset[str]
    study_test: StudyTest | None = None
    series_test: SeriesTest | None = None
    study_uid: str | None = None
    series_uid: str | None = None

    def expected(self, studies: Sequence[SyntheticStudy]) -> list[str]:
        """UIDs of the matching entities in primary key order, as results are ordered."""
        found: list[str] = []
        for study in studies:
            if self.study_uid is not None and study.uid != self.study_uid:
                continue
            if self.study_test is not None and not self.study_test(study):
                continue
            if self.level is STUDY:
                found.append(study.uid)
                continue
            for series in study.series:
                if self.series_uid is not None and series.uid != self.series_uid:
                    continue
                if self.series_test is not None and not self.series_test(study, series):
                    continue
                found.append(series.uid if self.level is SERIES else series.sop_instance_uid)
        return found


def _words(name: str) -> list[str]:
    for separator in "^= -":
        name = name.replace(separator, " ")
    return name.split()


def _between(low: str, high: str) -> Callable[[str], bool]:
    return lambda value: low <= value <= high


STUDY_UID = "1.2.826.0.1.3680043.10.543.77777"
SERIES_UID = "1.2.826.0.1.3680043.10.543.77777.2"
NM_IMAGE = "1.2.840.10008.5.1.4.1.1.20"
STUDY_TIME = _between("101500.000000", "101559.999999")
PPS_TIME = _between("093000.000000", "093009.999999")

CASES = [
    # Study level: PS3.18 Table 10.6.1-5.
    Case(
        "PatientID",
        STUDY,
        {"PatientID": "PID0012345"},
        frozenset({"ix_studies_patient_id"}),
        lambda s: s.patient_id == "PID0012345",
    ),
    Case(
        "PatientID infix wild card",
        STUDY,
        {"PatientID": "*012345*"},
        frozenset({"ix_studies_patient_id_trgm"}),
        lambda s: "012345" in s.patient_id,
    ),
    Case(
        "PatientName prefix",
        STUDY,
        {"PatientName": "Kowalski^P*"},
        frozenset({"ix_studies_patient_name_text"}),
        lambda s: s.patient_name.startswith("kowalski^p"),
    ),
    Case(
        "PatientName exact",
        STUDY,
        {"PatientName": "KOWALSKI^Peter"},
        frozenset({"ix_studies_patient_name_text"}),
        lambda s: s.patient_name.split("=")[0] == "kowalski^peter",
    ),
    Case(
        "PatientName infix wild card",
        STUDY,
        {"PatientName": "*ski^pe*"},
        frozenset({"ix_studies_patient_name_trgm"}),
        lambda s: "ski^pe" in s.patient_name,
    ),
    Case(
        "PatientName fuzzy",
        STUDY,
        {"PatientName": "kowal pet", "fuzzymatching": "true"},
        frozenset({"ix_studies_patient_name_trgm", "ix_studies_patient_name_text"}),
        lambda s: all(
            any(word.startswith(token) for word in _words(s.patient_name))
            for token in ("kowal", "pet")
        ),
    ),
    Case(
        "AccessionNumber",
        STUDY,
        {"AccessionNumber": "ACC00054321"},
        frozenset({"ix_studies_accession_number"}),
        lambda s: s.accession_number == "ACC00054321",
    ),
    Case(
        "AccessionNumber prefix",
        STUDY,
        {"AccessionNumber": "ACC0005432*"},
        frozenset({"ix_studies_accession_number_trgm"}),
        lambda s: s.accession_number.startswith("ACC0005432"),
    ),
    Case(
        "StudyDate range",
        STUDY,
        {"StudyDate": "20230601-20230607"},
        frozenset({"ix_studies_study_date"}),
        lambda s: "20230601" <= s.study_date <= "20230607",
    ),
    Case(
        "StudyDate",
        STUDY,
        {"StudyDate": "20210315"},
        frozenset({"ix_studies_study_date"}),
        lambda s: s.study_date == "20210315",
    ),
    Case(
        "StudyTime range",
        STUDY,
        {"StudyTime": "1015-1015"},
        frozenset({"ix_studies_study_time"}),
        lambda s: STUDY_TIME(s.study_time),
    ),
    Case(
        "ModalitiesInStudy",
        STUDY,
        {"ModalitiesInStudy": "NM"},
        frozenset({"ix_series_modality_study_pk"}),
        lambda s: any(series.modality == "NM" for series in s.series),
    ),
    Case(
        "ModalitiesInStudy, common (page and COUNT)",
        STUDY,
        {"ModalitiesInStudy": "CT"},
        frozenset({"ix_series_modality_study_pk"}),
        lambda s: any(series.modality == "CT" for series in s.series),
    ),
    Case(
        "ReferringPhysicianName",
        STUDY,
        {"ReferringPhysicianName": "DR17^*"},
        frozenset({"ix_studies_referring_physician_name_text"}),
        lambda s: s.referring_physician_name.startswith("dr17^"),
    ),
    Case(
        "StudyInstanceUID",
        STUDY,
        {"StudyInstanceUID": STUDY_UID},
        frozenset({"uq_studies_study_instance_uid"}),
        lambda s: s.uid == STUDY_UID,
    ),
    Case(
        "StudyInstanceUID list",
        STUDY,
        {"StudyInstanceUID": f"{STUDY_UID}0,{STUDY_UID},{STUDY_UID}1"},
        frozenset({"uq_studies_study_instance_uid"}),
        lambda s: s.uid in {STUDY_UID + "0", STUDY_UID, STUDY_UID + "1"},
    ),
    Case(
        "StudyID",
        STUDY,
        {"StudyID": "4242"},
        frozenset({"ix_studies_study_id_text"}),
        lambda s: s.study_id == "4242",
    ),
    # Series level.
    Case(
        "Modality",
        SERIES,
        {"Modality": "NM"},
        frozenset({"ix_series_modality_study_pk", "ix_series_modality"}),
        series_test=lambda s, r: r.modality == "NM",
    ),
    Case(
        "SeriesInstanceUID",
        SERIES,
        {"SeriesInstanceUID": SERIES_UID},
        frozenset({"uq_series_series_instance_uid"}),
        series_test=lambda s, r: r.uid == SERIES_UID,
    ),
    Case(
        "SeriesNumber in a study",
        SERIES,
        {"SeriesNumber": "2"},
        frozenset({"uq_studies_study_instance_uid"}),
        series_test=lambda s, r: r.number == 2,
        study_uid=STUDY_UID,
    ),
    Case(
        "PerformedProcedureStepStartDate",
        SERIES,
        {"PerformedProcedureStepStartDate": "20220301-20220302"},
        frozenset({"ix_series_performed_procedure_step_start_date"}),
        lambda s: "20220301" <= s.study_date <= "20220302",
    ),
    Case(
        "PerformedProcedureStepStartTime",
        SERIES,
        {"PerformedProcedureStepStartTime": "093000-093009"},
        frozenset({"ix_series_performed_procedure_step_start_time"}),
        lambda s: PPS_TIME(s.study_time),
    ),
    Case(
        "RequestAttributesSequence.ScheduledProcedureStepID",
        SERIES,
        {"RequestAttributesSequence.ScheduledProcedureStepID": "SPS311110"},
        frozenset({"ix_series_requests_scheduled_procedure_step_id"}),
        series_test=lambda s, r: r.has_request and r.pk == 311110,
    ),
    Case(
        "RequestAttributesSequence.RequestedProcedureID",
        SERIES,
        {"RequestAttributesSequence.RequestedProcedureID": "RP77777"},
        frozenset({"ix_series_requests_requested_procedure_id"}),
        lambda s: s.pk == 77777,
        lambda s, r: r.has_request,
    ),
    Case(
        "RequestAttributesSequence.AccessionNumber",
        SERIES,
        {"RequestAttributesSequence.AccessionNumber": "ACC00012346"},
        frozenset({"ix_series_requests_accession_number"}),
        lambda s: s.pk == 12346,
        lambda s, r: r.has_request,
    ),
    # Instance level.
    Case(
        "SOPClassUID",
        INSTANCE,
        {"SOPClassUID": NM_IMAGE},
        frozenset({"ix_instances_sop_class_uid"}),
        series_test=lambda s, r: r.sop_class_uid == NM_IMAGE,
    ),
    Case(
        "SOPInstanceUID",
        INSTANCE,
        {"SOPInstanceUID": SERIES_UID + ".1"},
        frozenset({"uq_instances_sop_instance_uid"}),
        series_test=lambda s, r: r.uid == SERIES_UID,
    ),
    Case(
        "InstanceNumber in a series",
        INSTANCE,
        {"InstanceNumber": "1"},
        frozenset({"uq_series_series_instance_uid"}),
        study_uid=STUDY_UID,
        series_uid=SERIES_UID,
    ),
]


# -- plans ----------------------------------------------------------------------------------


@dataclass
class Statement:
    sql: str
    parameters: Any
    plan: dict[str, Any] = field(default_factory=dict)
    milliseconds: float = 0.0  # execution time in the server, from EXPLAIN ANALYZE


def _index_scans(plan: dict[str, Any]) -> list[str]:
    return [
        f"{node['Node Type']} on {node['Index Name']}"
        for node in plan_nodes(plan)
        if node["Node Type"] in INDEX_NODES
    ]


def _seq_scans(plan: dict[str, Any]) -> list[str]:
    return [
        str(node["Relation Name"])
        for node in plan_nodes(plan)
        if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in SEARCHED_TABLES
    ]


def _run(engine: Engine, case: Case, limit: int) -> tuple[SearchResult, list[Statement], float]:
    """Search twice (the second time warm); explain and time every statement it sent."""
    query = parse_query(
        case.level,
        list(case.params.items()),
        study_uid=case.study_uid,
        series_uid=case.series_uid,
        default_limit=limit,
        max_limit=limit,
    )
    captured: list[Statement] = []

    def capture(_conn: Any, _cursor: Any, sql: str, parameters: Any, *_args: Any) -> None:
        captured.append(Statement(sql, parameters))

    with engine.connect() as connection, Session(bind=connection) as session:
        search(session, query, base_url="http://localhost/dicom-web")
        event.listen(engine, "before_cursor_execute", capture)
        try:
            started = time.perf_counter()
            result = search(session, query, base_url="http://localhost/dicom-web")
            elapsed = time.perf_counter() - started
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        for statement in captured:
            explained = connection.exec_driver_sql(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + statement.sql, statement.parameters
            ).scalar()
            statement.plan = explained[0]["Plan"]
            statement.milliseconds = float(explained[0]["Execution Time"])
    return result, captured, elapsed


_UID_TAGS = {STUDY: "0020000D", SERIES: "0020000E", INSTANCE: "00080018"}


def _uids(result: SearchResult, level: QueryLevel) -> list[str]:
    return [item[_UID_TAGS[level]]["Value"][0] for item in result.items]


def test_default_matching_keys_are_served_by_indexes(large_index: LargeIndex) -> None:
    # One test rather than one per key: under pytest-xdist, each worker running a test of
    # this module would build its own copy of the large index.
    _check_the_synthetic_rows(large_index)
    limit = Settings().qido_default_limit
    problems: list[str] = []
    report = [
        f"{STUDIES} studies filled in {large_index.fill_seconds:.1f} s, revision 0003 and "
        f"later applied over them in {large_index.upgrade_seconds:.1f} s; "
        f"collation {large_index.collation}; limit {limit}",
        "search: ms for the whole search() call, warm; sql: ms in PostgreSQL for its statements",
        f"{'key':52} {'rows':>5} {'search':>7} {'sql':>6}  page plan",
    ]
    for case in CASES:
        wanted = large_index.acceptable(case.indexes)
        if not wanted & large_index.indexes:
            # Revision 0003 skips the trigram indexes when pg_trgm cannot be created.
            report.append(f"{case.name:52} skipped: none of {sorted(wanted)} exists")
            continue
        result, statements, elapsed = _run(large_index.engine, case, limit)
        expected = case.expected(large_index.studies)
        if _uids(result, case.level) != expected[:limit]:
            problems.append(f"{case.name}: wrong rows ({len(result.items)}, not {len(expected)})")
        if result.remaining != max(len(expected) - limit, 0):
            problems.append(f"{case.name}: remaining {result.remaining}, not {len(expected)}")
        # The page query, then the COUNT when further results remain; then computed attributes.
        filtered = statements[: 2 if result.remaining else 1]
        for statement in filtered:
            scans = _index_scans(statement.plan)
            if not any(scan.split(" on ")[1] in wanted for scan in scans):
                kind = "COUNT" if statement is not statements[0] else "page"
                problems.append(f"{case.name}: {kind} query uses {scans}, none of {wanted}")
        for statement in statements:
            if seq := _seq_scans(statement.plan):
                first_line = statement.sql.splitlines()[0][:80]
                problems.append(f"{case.name}: Seq Scan on {seq} in {first_line}")
        plans = [", ".join(dict.fromkeys(_index_scans(item.plan))) for item in filtered]
        sql = sum(statement.milliseconds for statement in statements)
        line = f"{case.name:52} {len(expected):5} {elapsed * 1000:7.1f} {sql:6.1f}  {plans[0]}"
        report.append(line + (f"; COUNT: {plans[1]}" if len(plans) > 1 else ""))
    print("\n".join(report))
    assert not problems, "\n".join(problems)


def _check_the_synthetic_rows(large_index: LargeIndex) -> None:
    """A guard on the test data itself: SQL and Python describe the same archive."""
    with large_index.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT study_instance_uid, patient_name, patient_id, study_date, study_time, "
                "accession_number, study_id, referring_physician_name FROM studies "
                "WHERE pk IN (1, 2, 20000, 77777, :last) ORDER BY pk"
            ),
            {"last": STUDIES},
        ).all()
        series = connection.execute(
            text(
                "SELECT r.series_instance_uid, r.modality, i.sop_class_uid FROM series r "
                "JOIN instances i ON i.series_pk = r.pk WHERE r.study_pk = 77777 ORDER BY r.pk"
            )
        ).all()
        counts = connection.execute(
            text("SELECT modality, count(*) FROM series GROUP BY modality")
        ).all()
    by_pk = {study.pk: study for study in large_index.studies}
    for row, pk in zip(rows, (1, 2, 20000, 77777, STUDIES), strict=True):
        study = by_pk[pk]
        assert tuple(row) == (
            study.uid,
            study.patient_name,
            study.patient_id,
            study.study_date,
            study.study_time,
            study.accession_number,
            study.study_id,
            study.referring_physician_name,
        )
    assert [tuple(row) for row in series] == [
        (r.uid, r.modality, r.sop_class_uid) for r in by_pk[77777].series
    ]
    expected: dict[str, int] = {}
    for study in large_index.studies:
        for r in study.series:
            expected[r.modality] = expected.get(r.modality, 0) + 1
    assert dict((str(m), int(c)) for m, c in counts) == expected
