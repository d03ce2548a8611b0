"""The metadata index: studies, series, instances, and blob intents.

Each level keeps the attributes QIDO matches on as indexed columns (normalised as in
:mod:`dicomweb_server.dicom.values`) and the DICOM JSON it returns, pre-serialised, so that
neither a search nor a metadata request ever opens a stored file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UID = String(64)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table_of(model: type[Base]) -> Table:
    """The Core table of a mapped class, typed (``__table__`` is typed as a FromClause)."""
    return cast(Table, model.__table__)


class Study(Base):
    """One study with its patient; attributes come from the first instance stored into it."""

    __tablename__ = "studies"

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_name: Mapped[str | None] = mapped_column(String(400))
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8), index=True)
    study_time: Mapped[str | None] = mapped_column(String(13))
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_id: Mapped[str | None] = mapped_column(String(64))
    study_description: Mapped[str | None] = mapped_column(String(400))
    referring_physician_name: Mapped[str | None] = mapped_column(String(400))
    attributes: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Series(Base):
    """One series; attributes come from the first instance stored into it."""

    __tablename__ = "series"

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.pk", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(400))
    series_date: Mapped[str | None] = mapped_column(String(8))
    series_time: Mapped[str | None] = mapped_column(String(13))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    performed_procedure_step_start_date: Mapped[str | None] = mapped_column(String(8))
    performed_procedure_step_start_time: Mapped[str | None] = mapped_column(String(13))
    attributes: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SeriesRequest(Base):
    """One item of a series' Request Attributes Sequence (0040,0275), for matching."""

    __tablename__ = "series_requests"

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.pk", ondelete="CASCADE"), index=True)
    requested_procedure_id: Mapped[str | None] = mapped_column(String(64), index=True)
    scheduled_procedure_step_id: Mapped[str | None] = mapped_column(String(64), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64))


class Instance(Base):
    """One stored SOP instance: where its bytes are and everything reads need about them."""

    __tablename__ = "instances"

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.pk", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID, index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    content_date: Mapped[str | None] = mapped_column(String(8))
    content_time: Mapped[str | None] = mapped_column(String(13))
    acquisition_datetime: Mapped[str | None] = mapped_column(String(21))
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(200))
    metadata_json: Mapped[bytes] = mapped_column(LargeBinary)
    bulk_json: Mapped[bytes | None] = mapped_column(LargeBinary)
    pixel_layout_json: Mapped[bytes | None] = mapped_column(LargeBinary)
    deflated: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BlobIntent(Base):
    """A blob that may exist in the store without an instance row referencing it.

    Written (and committed) before a blob is put into the store or after its row is
    deleted; removed once the row and the blob agree. Whatever a crash leaves here is what
    start-up recovery has to look at, so recovery never scans the whole store.
    """

    __tablename__ = "blob_intents"

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    blob_key: Mapped[str] = mapped_column(String(200), index=True)
    #: The worker whose store or delete attempt wrote the intent; only a worker that is gone
    #: (see :class:`Worker`) may have its intents resolved by another.
    owner: Mapped[str | None] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Worker(Base):
    """One running archive process, alive while it renews ``heartbeat``.

    Several processes, on one host or several, share the index and the store. Intents left by
    a process that died must be resolved, but those of a process still storing must not: the
    lease tells them apart without any process having to know the others.
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Seconds since the epoch of the last renewal, from the worker's own clock.
    heartbeat: Mapped[float] = mapped_column(Float, index=True)


Index("ix_instances_blob_key", Instance.blob_key)
Index("ix_studies_study_description", Study.study_description)
Index(
    "ix_studies_patient_name_text",
    Study.patient_name,
    postgresql_ops={"patient_name": "text_pattern_ops"},
)

# -- QIDO-RS matching keys on PostgreSQL (revision 0003; docs/architecture.md) --------------
# text_pattern_ops serves both "=" and LIKE 'prefix%' under any database collation.
Index(
    "ix_studies_referring_physician_name_text",
    Study.referring_physician_name,
    postgresql_ops={"referring_physician_name": "text_pattern_ops"},
)
Index("ix_studies_study_id_text", Study.study_id, postgresql_ops={"study_id": "text_pattern_ops"})
Index("ix_studies_study_time", Study.study_time)
# ModalitiesInStudy is EXISTS (series of the study with the modality): this index answers it
# from either side (studies with the modality, or the modality of one study) without
# reading series rows, and serves Modality at series level too.
Index("ix_series_modality_study_pk", Series.modality, Series.study_pk)
Index("ix_series_performed_procedure_step_start_date", Series.performed_procedure_step_start_date)
Index("ix_series_performed_procedure_step_start_time", Series.performed_procedure_step_start_time)
Index("ix_series_requests_accession_number", SeriesRequest.accession_number)
# Trigram GIN indexes (pg_trgm) for wild cards without a literal prefix and fuzzy names;
# plain B-trees on SQLite. Revision 0003 skips them when pg_trgm cannot be created.
Index(
    "ix_studies_patient_name_trgm",
    Study.patient_name,
    postgresql_using="gin",
    postgresql_ops={"patient_name": "gin_trgm_ops"},
)
Index(
    "ix_studies_referring_physician_name_trgm",
    Study.referring_physician_name,
    postgresql_using="gin",
    postgresql_ops={"referring_physician_name": "gin_trgm_ops"},
)
Index(
    "ix_studies_patient_id_trgm",
    Study.patient_id,
    postgresql_using="gin",
    postgresql_ops={"patient_id": "gin_trgm_ops"},
)
Index(
    "ix_studies_accession_number_trgm",
    Study.accession_number,
    postgresql_using="gin",
    postgresql_ops={"accession_number": "gin_trgm_ops"},
)

__all__ = ["Base", "BlobIntent", "Instance", "Series", "SeriesRequest", "Study", "Worker"]
