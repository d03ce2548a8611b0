"""The metadata index: studies, series, instances, and blob intents.

Each level keeps the attributes QIDO matches on as indexed columns (normalised as in
:mod:`dicomweb_server.dicom.values`) and the DICOM JSON it returns, pre-serialised, so that
neither a search nor a metadata request ever opens a stored file.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
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


class Study(Base):
    """One study with its patient; attributes come from the first instance stored into it."""

    __tablename__ = "studies"

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_name: Mapped[str | None] = mapped_column(String(400), index=True)
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
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


Index("ix_instances_blob_key", Instance.blob_key)
Index("ix_studies_study_description", Study.study_description)
Index(
    "ix_studies_patient_name_text",
    Study.patient_name,
    postgresql_ops={"patient_name": "text_pattern_ops"},
)

__all__ = ["Base", "BlobIntent", "Instance", "Series", "SeriesRequest", "Study"]
