"""All writes and key lookups of the index; QIDO queries live in :mod:`.qido`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dicomweb_server.index.models import BlobIntent, Instance, Series, SeriesRequest, Study
from dicomweb_server.index.records import InstanceRecord


class SeriesStudyMismatch(Exception):
    """The instance names a series that is already stored under another study."""


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """Where an instance's bytes are, and what the index knows about them."""

    blob_key: str
    sha256: str
    size: int
    bulk_json: bytes | None
    pixel_layout_json: bytes | None
    deflated: bool


def _insert(session: Session, table: type[Study] | type[Series]):  # type: ignore[no-untyped-def]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _get_or_create_study(session: Session, record: InstanceRecord) -> int:
    uid = record.study.study_instance_uid
    pk = session.scalar(select(Study.pk).where(Study.study_instance_uid == uid))
    if pk is not None:
        return pk
    statement = (
        _insert(session, Study)
        .values(**asdict(record.study))
        .on_conflict_do_nothing(index_elements=["study_instance_uid"])
    )
    session.execute(statement)
    pk = session.scalar(select(Study.pk).where(Study.study_instance_uid == uid))
    assert pk is not None
    return pk


def _get_or_create_series(session: Session, record: InstanceRecord, study_pk: int) -> int:
    uid = record.series.series_instance_uid
    row = session.execute(
        select(Series.pk, Series.study_pk).where(Series.series_instance_uid == uid)
    ).first()
    if row is None:
        values = asdict(record.series)
        requests = values.pop("requests")
        statement = (
            _insert(session, Series)
            .values(study_pk=study_pk, **values)
            .on_conflict_do_nothing(index_elements=["series_instance_uid"])
        )
        result = session.execute(statement)
        row = session.execute(
            select(Series.pk, Series.study_pk).where(Series.series_instance_uid == uid)
        ).first()
        assert row is not None
        if getattr(result, "rowcount", 0) and requests:
            session.add_all(SeriesRequest(series_pk=row.pk, **item) for item in requests)
    if row.study_pk != study_pk:
        raise SeriesStudyMismatch(uid)
    return int(row.pk)


def insert_instance(
    session: Session,
    record: InstanceRecord,
    blob: StoredBlob,
) -> Instance:
    """Add an instance (creating its study and series); the caller commits.

    Raises ``sqlalchemy.exc.IntegrityError`` when the SOP Instance UID is already stored
    (possibly by a concurrent request) and :class:`SeriesStudyMismatch`.
    """
    study_pk = _get_or_create_study(session, record)
    series_pk = _get_or_create_series(session, record, study_pk)
    instance = Instance(series_pk=series_pk, **asdict(record.instance), **asdict(blob))
    session.add(instance)
    session.flush()
    return instance


def replace_instance(
    session: Session, existing: Instance, record: InstanceRecord, blob: StoredBlob
) -> None:
    """Point an existing instance row at new bytes (overwrite allowed by settings)."""
    for name, value in asdict(record.instance).items():
        setattr(existing, name, value)
    for name, value in asdict(blob).items():
        setattr(existing, name, value)
    session.flush()


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


def add_intents(session: Session, keys: Iterable[str]) -> None:
    session.add_all(BlobIntent(blob_key=key) for key in keys)


def remove_intents(session: Session, keys: Sequence[str]) -> None:
    if keys:
        session.execute(delete(BlobIntent).where(BlobIntent.blob_key.in_(list(keys))))


def pending_intents(session: Session, older_than: datetime | None = None) -> list[str]:
    query = select(BlobIntent.blob_key)
    if older_than is not None:
        query = query.where(BlobIntent.created_at < older_than)
    return list(session.scalars(query))


def referenced_keys(session: Session, keys: Sequence[str]) -> set[str]:
    if not keys:
        return set()
    return set(session.scalars(select(Instance.blob_key).where(Instance.blob_key.in_(keys))))


def delete_instances(session: Session, instance_pks: Sequence[int]) -> list[str]:
    """Delete instance rows, and series and studies left empty; return their blob keys.

    The keys are recorded as intents in the same transaction, so a crash between the commit
    and the blob deletion leaves something start-up recovery will find.
    """
    if not instance_pks:
        return []
    rows = session.execute(
        select(Instance.blob_key, Instance.series_pk).where(Instance.pk.in_(instance_pks))
    ).all()
    keys = [row.blob_key for row in rows]
    series_pks = {row.series_pk for row in rows}
    add_intents(session, keys)
    session.execute(delete(Instance).where(Instance.pk.in_(instance_pks)))
    if series_pks:
        empty_series = list(
            session.scalars(
                select(Series.pk)
                .where(Series.pk.in_(series_pks))
                .where(~select(Instance.pk).where(Instance.series_pk == Series.pk).exists())
            )
        )
        study_pks = set(session.scalars(select(Series.study_pk).where(Series.pk.in_(series_pks))))
        if empty_series:
            session.execute(delete(SeriesRequest).where(SeriesRequest.series_pk.in_(empty_series)))
            session.execute(delete(Series).where(Series.pk.in_(empty_series)))
        if study_pks:
            session.execute(
                delete(Study)
                .where(Study.pk.in_(study_pks))
                .where(~select(Series.pk).where(Series.study_pk == Study.pk).exists())
            )
    return keys


def count_instances(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Instance)) or 0)
