"""The migrations build the schema the models describe, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, Index, inspect, text

from dicomweb_server.index.database import alembic_config, create_index_engine
from dicomweb_server.index.models import Base

#: What revision 0003 adds (docs/architecture.md, "PostgreSQL indexes").
QIDO_INDEXES = {
    "studies": {
        "ix_studies_referring_physician_name_text",
        "ix_studies_study_id_text",
        "ix_studies_study_time",
        "ix_studies_patient_name_trgm",
        "ix_studies_referring_physician_name_trgm",
        "ix_studies_patient_id_trgm",
        "ix_studies_accession_number_trgm",
    },
    "series": {
        "ix_series_modality_study_pk",
        "ix_series_performed_procedure_step_start_date",
        "ix_series_performed_procedure_step_start_time",
    },
    "series_requests": {"ix_series_requests_accession_number"},
}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_index_engine(database_url)
    yield engine
    engine.dispose()


def _has_trigram(connection: Connection) -> bool:
    if connection.dialect.name != "postgresql":
        return True
    found = connection.scalar(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'"))
    return found is not None


def _index_name(diff: Any) -> str | None:
    if isinstance(diff, tuple) and diff and isinstance(diff[-1], Index):
        return str(diff[-1].name)
    return None


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        if not _has_trigram(connection):
            # Revision 0003 skips the trigram indexes where pg_trgm cannot be created.
            differences = [
                diff for diff in differences if not (_index_name(diff) or "").endswith("_trgm")
            ]
    assert differences == []


_PG_INDEXES = """
    SELECT i.relname, am.amname, array_agg(opc.opcname ORDER BY k.ord),
        array_agg(opc.opcdefault ORDER BY k.ord)
    FROM pg_index AS x
    JOIN pg_class AS i ON i.oid = x.indexrelid
    JOIN pg_class AS t ON t.oid = x.indrelid
    JOIN pg_am AS am ON am.oid = i.relam
    CROSS JOIN LATERAL unnest(x.indclass) WITH ORDINALITY AS k(opclass, ord)
    JOIN pg_opclass AS opc ON opc.oid = k.opclass
    WHERE t.relnamespace = current_schema()::regnamespace
    GROUP BY i.relname, am.amname
"""


def test_postgresql_access_methods_and_operator_classes_match_the_models(
    engine: Engine,
) -> None:
    """What alembic's comparison leaves out: ``USING`` and the operator class of each column."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL index options")
    with engine.connect() as connection:
        trigram = _has_trigram(connection)
        reflected = {
            name: (method, list(classes), list(defaults))
            for name, method, classes, defaults in connection.execute(text(_PG_INDEXES))
        }
    for table in Base.metadata.sorted_tables:
        for index in table.indexes:
            name = str(index.name)
            if name.endswith("_trgm") and not trigram:
                continue
            options = index.dialect_options["postgresql"]
            method, classes, defaults = reflected[name]
            assert method == (options["using"] or "btree"), name
            ops = options["ops"] or {}
            for column, opclass, default in zip(index.columns, classes, defaults, strict=True):
                if column.key in ops:
                    assert opclass == ops[column.key].rsplit(".", 1)[-1], name
                else:
                    assert default, f"{name}: {column.key} has operator class {opclass}"


def test_revision_0003_downgrades_and_upgrades_again(database_url: str, engine: Engine) -> None:
    config = alembic_config(database_url)

    def present() -> dict[str, set[str]]:
        inspector = inspect(engine)
        return {
            table: {str(index["name"]) for index in inspector.get_indexes(table)} & names
            for table, names in QIDO_INDEXES.items()
        }

    with engine.connect() as connection:
        trigram = _has_trigram(connection)
    expected = {
        table: {name for name in names if trigram or not name.endswith("_trgm")}
        for table, names in QIDO_INDEXES.items()
    }
    assert present() == expected
    command.downgrade(config, "0002")
    assert present() == {table: set() for table in QIDO_INDEXES}
    command.upgrade(config, "head")
    assert present() == expected
