"""indexes for every default QIDO-RS matching key on PostgreSQL

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 16:00:00

Each default matching key of PS3.18 Table 10.6.1-5 gets an index its query can use on a large
PostgreSQL index (docs/architecture.md, "PostgreSQL indexes"):

* names and IDs compared with ``=`` or a ``LIKE 'prefix%'`` use ``text_pattern_ops`` B-trees,
  which serve both operators whatever the database collation (a default B-tree serves
  ``LIKE`` only under the C collation);
* wild cards that do not start with a literal prefix (``*mul*``, as OHIF's study list sends
  them) and fuzzy person-name matching use trigram GIN indexes from the ``pg_trgm``
  extension, created here when missing (a trusted extension since PostgreSQL 13: the
  database owner may create it). When it cannot be created, those indexes are skipped with
  a warning and such searches scan the studies table;
* ModalitiesInStudy, an EXISTS over the study's series, uses ``(modality, study_pk)`` in
  both directions, without visiting series rows.

SQLite gets the same index names as plain B-trees (it ignores the PostgreSQL options), so the
models describe both databases.
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

#: B-tree indexes: (name, table, columns, PostgreSQL operator classes by column).
BTREE_INDEXES: list[tuple[str, str, list[str], dict[str, str]]] = [
    (
        "ix_studies_referring_physician_name_text",
        "studies",
        ["referring_physician_name"],
        {"referring_physician_name": "text_pattern_ops"},
    ),
    ("ix_studies_study_id_text", "studies", ["study_id"], {"study_id": "text_pattern_ops"}),
    ("ix_studies_study_time", "studies", ["study_time"], {}),
    ("ix_series_modality_study_pk", "series", ["modality", "study_pk"], {}),
    (
        "ix_series_performed_procedure_step_start_date",
        "series",
        ["performed_procedure_step_start_date"],
        {},
    ),
    (
        "ix_series_performed_procedure_step_start_time",
        "series",
        ["performed_procedure_step_start_time"],
        {},
    ),
    ("ix_series_requests_accession_number", "series_requests", ["accession_number"], {}),
]

#: Trigram GIN indexes (PostgreSQL), plain B-trees elsewhere: (name, table, column).
TRIGRAM_INDEXES: list[tuple[str, str, str]] = [
    ("ix_studies_patient_name_trgm", "studies", "patient_name"),
    ("ix_studies_referring_physician_name_trgm", "studies", "referring_physician_name"),
    ("ix_studies_patient_id_trgm", "studies", "patient_id"),
    ("ix_studies_accession_number_trgm", "studies", "accession_number"),
]

# Serialises the check-and-create of pg_trgm between processes migrating side by side (one
# database may hold several archives' schemas): CREATE EXTENSION IF NOT EXISTS alone races.
_EXTENSION_LOCK = 0x6463_6D77_7467_726D  # "dcmwtgrm"


def _trigram_schema(bind: sa.Connection) -> str | None:
    """The schema holding pg_trgm, installing it when missing; None when it cannot be."""
    bind.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _EXTENSION_LOCK})
    find = sa.text(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'"
    )
    schema = bind.execute(find).scalar()
    if schema is None:
        try:
            with bind.begin_nested():
                bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        except sa.exc.DBAPIError as error:
            log.warning(
                "pg_trgm could not be created (%s); wild card searches without a literal "
                "prefix and fuzzy name searches will scan the studies table. See "
                "docs/architecture.md, 'PostgreSQL indexes'.",
                str(error.orig).strip().splitlines()[0],
            )
            return None
        schema = bind.execute(find).scalar()
    return str(schema)


#: Made redundant by indexes above: the ``text_pattern_ops`` one serves ``=`` as well as
#: prefixes, and (modality, study_pk) serves every modality search.
REDUNDANT_INDEXES = (
    ("ix_studies_patient_name", "studies", ["patient_name"]),
    ("ix_series_modality", "series", ["modality"]),
)


def upgrade() -> None:
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    for name, table, _columns in REDUNDANT_INDEXES:
        op.drop_index(name, table_name=table)
    for name, table, columns, ops in BTREE_INDEXES:
        op.create_index(name, table, columns, unique=False, postgresql_ops=ops)
    if not postgresql:
        for name, table, column in TRIGRAM_INDEXES:
            op.create_index(name, table, [column], unique=False)
        return
    schema = _trigram_schema(bind)
    if schema is None:
        return
    # The operator class is qualified: the extension's schema need not be on search_path.
    opclass = '"{}".gin_trgm_ops'.format(schema.replace('"', '""'))
    for name, table, column in TRIGRAM_INDEXES:
        op.create_index(
            name,
            table,
            [column],
            unique=False,
            postgresql_using="gin",
            postgresql_ops={column: opclass},
        )


def downgrade() -> None:
    # pg_trgm stays installed: other schemas of the database may use it.
    for name, table, _column in reversed(TRIGRAM_INDEXES):
        op.drop_index(name, table_name=table, if_exists=True)
    for name, table, _columns, _ops in reversed(BTREE_INDEXES):
        op.drop_index(name, table_name=table)
    for name, table, columns in REDUNDANT_INDEXES:
        op.create_index(name, table, columns, unique=False)
