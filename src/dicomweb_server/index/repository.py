"""All writes and key lookups of the index; QIDO queries live in :mod:`.qido`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dicomweb_server.index import driver_sql
from dicomweb_server.index.models import (
    BlobIntent,
    Instance,
    Series,
    SeriesRequest,
    Study,
    table_of,
    utcnow,
)
from dicomweb_server.index.records import InstanceRecord

# Part of this module's interface (its writes take one), defined with the other records.
from dicomweb_server.index.records import StoredBlob as StoredBlob


class SeriesStudyMismatch(Exception):
    """The instance names a series that is already stored under another study."""


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(item.name for item in fields(kind))
    return names


def _columns(row: Any) -> dict[str, Any]:
    """A dataclass's fields as statement parameters.

    ``dataclasses.asdict`` deep-copies every value (each bytes column through ``deepcopy``);
    the values are only read, so a shallow mapping does, at a fraction of the cost.
    """
    return {name: getattr(row, name) for name in _field_names(type(row))}


def _values(row: Any) -> list[Any]:
    """A dataclass's field values in field order (the driver statements' column order)."""
    return [getattr(row, name) for name in _field_names(type(row))]


class _Statements:
    """The write path's rarer statements (new studies and series, overwrites), built once per
    dialect and executed with parameters; the frequent ones are in :mod:`.driver_sql`.

    Building a statement per call (``insert(...).values(**row)``) makes SQLAlchemy derive a
    cache key from every value each time, which cost more CPU than everything else in a
    store; prepared statements on the tables skip that and the ORM entirely.
    """

    def __init__(self, dialect: str) -> None:
        insert_for = postgresql.insert if dialect == "postgresql" else sqlite.insert
        studies, series = table_of(Study), table_of(Series)
        instances = table_of(Instance)
        self.insert_study = insert_for(studies).on_conflict_do_nothing(
            index_elements=["study_instance_uid"]
        )
        self.insert_series = (
            insert_for(series)
            .on_conflict_do_nothing(index_elements=["series_instance_uid"])
            .returning(series.c.pk)
        )
        self.insert_request = insert(table_of(SeriesRequest))
        self.update_instance = update(instances).where(instances.c.pk == bindparam("target_pk"))
        self.instance_series = select(instances.c.series_pk).where(
            instances.c.pk == bindparam("target_pk")
        )


_STATEMENTS: dict[str, _Statements] = {}


def _connection(target: Connection | Session) -> Connection:
    return target.connection() if isinstance(target, Session) else target


def _prepared(connection: Connection) -> _Statements:
    name = connection.dialect.name
    statements = _STATEMENTS.get(name)
    if statements is None:
        statements = _STATEMENTS[name] = _Statements(name)
    return statements


@dataclass(slots=True)
class LevelCache:
    """Study and series keys already resolved in this transaction (a batch shares them)."""

    studies: dict[str, int] = field(default_factory=dict)
    #: series UID -> (series pk, study pk, Study Instance UID)
    series: dict[str, tuple[int, int, str]] = field(default_factory=dict)


def _stored_series(
    connection: Connection, uid: str, cache: LevelCache
) -> tuple[int, int, str] | None:
    found = cache.series.get(uid)
    if found is None:
        sql = driver_sql.statements(connection)
        row = driver_sql.run(connection, sql.series, (uid,)).fetchone()
        if row is not None:
            found = cache.series[uid] = (int(row[0]), int(row[1]), str(row[2]))
    return found


def _locked_study_pk(connection: Connection, uid: str) -> int | None:
    row = driver_sql.run(connection, driver_sql.statements(connection).study_pk, (uid,)).fetchone()
    return None if row is None else int(row[0])


def _study_pk(connection: Connection, record: InstanceRecord, cache: LevelCache) -> int:
    uid = record.study.study_instance_uid
    pk = cache.studies.get(uid)
    if pk is None:
        pk = _locked_study_pk(connection, uid)
    if pk is None:
        connection.execute(_prepared(connection).insert_study, _columns(record.study))
        pk = _locked_study_pk(connection, uid)
        assert pk is not None
    cache.studies[uid] = pk
    return pk


def _series_pk(connection: Connection, record: InstanceRecord, cache: LevelCache) -> int:
    """The series' key, creating study and series; refuses a series filed under another study.

    The study row is locked before the series is trusted: a delete of the study that
    committed meanwhile has then either removed the series (and it is created again) or
    waits for this transaction, so no instance is ever added to a level being deleted.
    """
    uid = record.series.series_instance_uid
    study_uid = record.study.study_instance_uid
    found = cache.series.get(uid)
    if found is None:
        seen = _stored_series(connection, uid, cache)
        if seen is not None and seen[2] != study_uid:
            raise SeriesStudyMismatch(uid)
        if seen is not None and connection.dialect.name == "sqlite":
            # SQLite's write transactions hold the one write lock from BEGIN IMMEDIATE on:
            # no delete can have committed since the look-up, so the series stands.
            cache.studies[study_uid] = seen[1]
            found = seen
        else:
            _study_pk(connection, record, cache)
            cache.series.pop(uid, None)
            found = _stored_series(connection, uid, cache)
    if found is None:
        study_pk = _study_pk(connection, record, cache)
        values = _columns(record.series)
        requests = values.pop("requests")
        statements = _prepared(connection)
        created = connection.execute(
            statements.insert_series, {"study_pk": study_pk, **values}
        ).scalar()
        if created is not None:
            found = cache.series[uid] = (int(created), study_pk, study_uid)
            if requests:
                connection.execute(
                    statements.insert_request,
                    [{"series_pk": created, **item} for item in requests],
                )
        else:  # created by a concurrent transaction meanwhile
            found = _stored_series(connection, uid, cache)
            assert found is not None
    if found[2] != study_uid:
        raise SeriesStudyMismatch(uid)
    return found[0]


def series_key(target: Connection | Session, record: InstanceRecord, cache: LevelCache) -> int:
    """The key of the record's series, creating study and series rows on first sight.

    Raises :class:`SeriesStudyMismatch` when the series is stored under another study.
    """
    return _series_pk(_connection(target), record, cache)


def insert_instances(
    target: Connection | Session, rows: Sequence[tuple[int, InstanceRecord, StoredBlob]]
) -> list[bool]:
    """Add instances into series already resolved by :func:`series_key`, in one statement.

    Each row is ``(series key, record, blob)``; returns, in order, whether each row was
    inserted (False: its SOP Instance UID is already stored, or taken by an earlier row of the
    same call). One multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` replaces a
    statement per instance, whose fixed cost dominated a commit cycle. The caller commits.
    """
    connection = _connection(target)
    if not rows:
        return []
    sql = driver_sql.statements(connection)
    created_at = utcnow()
    values: list[Any] = []
    for series_pk, record, blob in rows:
        values.append(
            sql.bind(
                [series_pk, *_values(record.instance), *_values(blob), created_at],
                sql.instance_processors,
            )
        )
    if len(rows) == 1:
        cursor = driver_sql.run(connection, sql.insert_instances(1, "pk"), values[0])
        return [cursor.fetchone() is not None]
    created: set[str] = set()
    for start in range(0, len(values), driver_sql.ROWS_PER_INSERT):
        chunk = values[start : start + driver_sql.ROWS_PER_INSERT]
        text = sql.insert_instances(len(chunk), "sop_instance_uid")
        flat = [value for row in chunk for value in row]
        created.update(row[0] for row in driver_sql.run(connection, text, flat).fetchall())
    inserted: list[bool] = []
    for _, record, _ in rows:
        uid = record.instance.sop_instance_uid
        inserted.append(uid in created)
        created.discard(uid)  # a later row with the same UID was the one refused
    return inserted


def insert_instance(
    target: Connection | Session, record: InstanceRecord, blob: StoredBlob, cache: LevelCache
) -> bool:
    """Add an instance, creating its study and series; False when its UID is already stored.

    ``ON CONFLICT DO NOTHING`` rather than catching an integrity error keeps the transaction
    usable on PostgreSQL when a concurrent request stored the same instance first. Raises
    :class:`SeriesStudyMismatch` before writing anything. The caller commits.
    """
    connection = _connection(target)
    series_pk = _series_pk(connection, record, cache)
    return insert_instances(connection, [(series_pk, record, blob)])[0]


def replace_instance(
    target: Connection | Session,
    instance_pk: int,
    record: InstanceRecord,
    blob: StoredBlob,
    cache: LevelCache,
) -> None:
    """Point a stored instance at new bytes (overwrite allowed), moving it if its series changed."""
    connection = _connection(target)
    statements = _prepared(connection)
    series_pk = _series_pk(connection, record, cache)
    old_series = connection.execute(statements.instance_series, {"target_pk": instance_pk}).scalar()
    connection.execute(
        statements.update_instance,
        {
            "target_pk": instance_pk,
            "series_pk": series_pk,
            **_columns(record.instance),
            **_columns(blob),
        },
    )
    if old_series is not None and old_series != series_pk:
        _delete_empty_levels(connection, {int(old_series)})


@dataclass(frozen=True, slots=True)
class StoredState:
    """What the index holds for a SOP Instance UID: enough to decide duplicate or conflict."""

    pk: int
    sha256: str
    blob_key: str


def stored_states(
    target: Connection | Session, sop_instance_uids: Sequence[str]
) -> dict[str, StoredState]:
    """The stored state of each given SOP Instance UID that is in the index (one query)."""
    if not sop_instance_uids:
        return {}
    connection = _connection(target)
    sql = driver_sql.statements(connection)
    found: dict[str, StoredState] = {}
    for chunk in _chunks(sop_instance_uids):
        rows = driver_sql.run(
            connection, sql.states(len(chunk)), sql.list_parameter(chunk)
        ).fetchall()
        for row in rows:
            found[row[0]] = StoredState(int(row[1]), row[2], row[3])
    return found


def add_intents(target: Connection | Session, keys: Iterable[str], owner: str | None) -> None:
    """Record blob keys that may exist without a row, owned by worker ``owner``."""
    keys = list(keys)
    if not keys:
        return
    connection = _connection(target)
    sql = driver_sql.statements(connection)
    created_at = utcnow()
    rows = [sql.bind([key, owner, created_at], sql.intent_processors) for key in keys]
    if len(rows) == 1:
        driver_sql.run(connection, sql.insert_intent, rows[0])
    else:
        driver_sql.run_many(connection, sql.insert_intent, rows)


#: Keys per IN list: SQLite refuses statements with more than 32766 bound parameters, and a
#: study can hold more instances than that.
IN_CHUNK = 5000


def _chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), IN_CHUNK):
        yield list(values[start : start + IN_CHUNK])


def remove_intents(target: Connection | Session, keys: Sequence[str]) -> int:
    """Remove the intents of ``keys``; returns how many there were.

    On PostgreSQL the look-up is kept on the ``blob_key`` index whatever the statistics say.
    The intents table is a queue: nearly empty at any moment, but its pages and index hold
    the dead rows of every store since the last vacuum. Planned from such statistics, the
    index costs as if every key read it all, and the planner scanned the table instead:
    measured, 13-29 ms per batch of 50 at 270,000 stored instances (growing with every store,
    which made ingest slow down as the archive grew) against 0.9 ms through the index.
    """
    if not keys:
        return 0
    connection = _connection(target)
    sql = driver_sql.statements(connection)
    if sql.postgres:
        driver_sql.run(connection, "SET LOCAL enable_seqscan = off")
    removed = 0
    for chunk in _chunks(keys):
        cursor = driver_sql.run(
            connection, sql.delete_intents(len(chunk)), sql.list_parameter(chunk)
        )
        removed += cursor.rowcount
    if sql.postgres:
        # Only for these statements (a failure rolls the setting back with the transaction).
        driver_sql.run(connection, "SET LOCAL enable_seqscan TO DEFAULT")
    return removed


def pending_intents(session: Session, older_than: datetime | None = None) -> list[str]:
    query = select(BlobIntent.blob_key)
    if older_than is not None:
        query = query.where(BlobIntent.created_at < older_than)
    return list(session.scalars(query))


def referenced_keys(session: Session, keys: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(keys):
        found.update(session.scalars(select(Instance.blob_key).where(Instance.blob_key.in_(chunk))))
    return found


def lock_study(session: Session, study_instance_uid: str) -> None:
    """Lock a study against stores into it until the transaction ends (before a delete).

    Without it, a store committing while a delete runs could add a series or instance that
    the delete's cascade then removes unseen, with its blob and without an intent.
    """
    session.execute(
        select(Study.pk).where(Study.study_instance_uid == study_instance_uid).with_for_update()
    )


def delete_instances(session: Session, instance_pks: Sequence[int], owner: str | None) -> list[str]:
    """Delete instance rows, and series and studies left empty; return their blob keys.

    The keys are recorded as intents in the same transaction, so a crash between the commit
    and the blob deletion leaves something start-up recovery will find.
    """
    keys: list[str] = []
    series_pks: set[int] = set()
    for chunk in _chunks(instance_pks):
        rows = session.execute(
            select(Instance.blob_key, Instance.series_pk).where(Instance.pk.in_(chunk))
        ).all()
        keys.extend(row.blob_key for row in rows)
        series_pks.update(row.series_pk for row in rows)
        add_intents(session, [row.blob_key for row in rows], owner)
        session.execute(delete(Instance).where(Instance.pk.in_(chunk)))
    _delete_empty_levels(session, series_pks)
    return keys


def _delete_empty_levels(session: Connection | Session, series_pks: set[int]) -> None:
    """Remove series without instances among ``series_pks``, then studies without series."""
    if not series_pks:
        return
    # Lock the studies first: later statements then see every store that committed into
    # them, so emptiness is judged on current rows and the cascade removes nothing new.
    session.execute(
        select(Study.pk)
        .where(Study.pk.in_(select(Series.study_pk).where(Series.pk.in_(series_pks))))
        .order_by(Study.pk)
        .with_for_update()
    )
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
