"""The store path's most frequent statements, run on the database driver's own cursor.

A commit cycle of one instance runs about nine statements. Through SQLAlchemy Core each
one cost about 45 µs of Python around the driver's few microseconds (execution context,
parameter and result processing, events): measured, some 0.4 ms of the committer's 1 ms of
CPU per instance. These statements take plain values and return plain rows, so they are
written here once per dialect as SQL text, from the tables' own metadata, and executed on
the driver connection inside the caller's SQLAlchemy transaction. Driver errors are raised
as SQLAlchemy's, so retries and error answers treat them as before.

Everything rarer (new studies and series, overwrites, deletes) stays in SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Column, Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from dicomweb_server.index.models import BlobIntent, Instance, Series, Study, table_of
from dicomweb_server.index.records import InstanceColumns, StoredBlob

#: The columns of an instance row in the order the repository passes their values: the
#: series key, the fields of ``InstanceColumns`` and of ``StoredBlob``, the creation time.
INSTANCE_COLUMNS = (
    "series_pk",
    *(item.name for item in fields(InstanceColumns)),
    *(item.name for item in fields(StoredBlob)),
    "created_at",
)

#: Rows per multi-row INSERT: well inside SQLite's 32,766 bound parameters.
ROWS_PER_INSERT = 200


Processor = Callable[[Any], Any]


def _processors(
    dialect: Dialect, columns: Sequence[Column[Any]]
) -> tuple[tuple[int, Processor], ...]:
    """The bind conversions SQLAlchemy applies to these columns (e.g. datetimes on SQLite).

    A column's generic type is first resolved to the dialect's own, as SQLAlchemy does: the
    generic ``DateTime`` would leave a datetime to the driver, which SQLite's would store
    in another text form.
    """
    found = []
    for position, column in enumerate(columns):
        processor = dialect.type_descriptor(column.type).bind_processor(dialect)
        if processor is not None:
            found.append((position, processor))
    return tuple(found)


class DriverStatements:
    """SQL text of the hot statements for one dialect, and how to bind their values."""

    def __init__(self, dialect: Dialect) -> None:
        self.postgres = dialect.name == "postgresql"
        mark = self.mark = "%s" if self.postgres else "?"
        studies, series = table_of(Study), table_of(Series)
        instances, intents = table_of(Instance), table_of(BlobIntent)
        self.error_class: type[Exception] = dialect.loaded_dbapi.Error
        # Stores lock their study in KEY SHARE mode, deletes in UPDATE mode (see
        # repository.lock_study). SQLite has one writer at a time and no row locks.
        self.study_pk = (
            f"SELECT {studies.c.pk.name} FROM {studies.name} "
            f"WHERE {studies.c.study_instance_uid.name} = {mark}"
            + (" FOR KEY SHARE" if self.postgres else "")
        )
        self.series = (
            f"SELECT s.pk, s.study_pk, t.study_instance_uid FROM {series.name} AS s "
            f"JOIN {studies.name} AS t ON s.study_pk = t.pk "
            f"WHERE s.series_instance_uid = {mark}"
        )
        self._states = (
            f"SELECT sop_instance_uid, pk, sha256, blob_key FROM {instances.name} "
            "WHERE sop_instance_uid"
        )
        self._delete_intents = f"DELETE FROM {intents.name} WHERE blob_key"
        intent_columns = [intents.c.blob_key, intents.c.owner, intents.c.created_at]
        self.insert_intent = (
            f"INSERT INTO {intents.name} (blob_key, owner, created_at) "
            f"VALUES ({mark}, {mark}, {mark})"
        )
        self.intent_processors = _processors(dialect, intent_columns)
        instance_columns = [instances.c[name] for name in INSTANCE_COLUMNS]
        self.instance_processors = _processors(dialect, instance_columns)
        self._instance_values = "(" + ", ".join([mark] * len(INSTANCE_COLUMNS)) + ")"
        self._insert_instance = (
            f"INSERT INTO {instances.name} ({', '.join(INSTANCE_COLUMNS)}) VALUES "
        )
        self._on_conflict = " ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING "

    def among(self, prefix: str, count: int) -> str:
        """``prefix`` matched against a list of `count` values (one array on PostgreSQL).

        One array parameter keeps PostgreSQL's statement text the same for every count.
        """
        if self.postgres:
            return f"{prefix} = ANY({self.mark})"
        return _in_list(prefix, count)

    def states(self, count: int) -> str:
        return self.among(self._states, count)

    def delete_intents(self, count: int) -> str:
        return self.among(self._delete_intents, count)

    def insert_instances(self, count: int, returning: str) -> str:
        return _insert_text(self._insert_instance, self._instance_values, count) + (
            self._on_conflict + returning
        )

    def bind(self, values: list[Any], processors: tuple[tuple[int, Processor], ...]) -> list[Any]:
        for position, processor in processors:
            values[position] = processor(values[position])
        return values

    def list_parameter(self, values: Sequence[Any]) -> list[Any]:
        """Parameters for :meth:`among`: one list (PostgreSQL) or one per value (SQLite)."""
        return [list(values)] if self.postgres else list(values)


@lru_cache(maxsize=256)
def _in_list(prefix: str, count: int) -> str:
    return f"{prefix} IN ({', '.join(['?'] * count)})"


@lru_cache(maxsize=256)
def _insert_text(prefix: str, row: str, count: int) -> str:
    return prefix + ", ".join([row] * count)


_BY_DIALECT: dict[str, DriverStatements] = {}


def statements(connection: Connection) -> DriverStatements:
    dialect = connection.dialect
    found = _BY_DIALECT.get(dialect.name)
    if found is None:
        found = _BY_DIALECT[dialect.name] = DriverStatements(dialect)
    return found


def run(connection: Connection, sql: str, parameters: Sequence[Any] = ()) -> Any:
    """Execute on the driver connection of `connection`'s current transaction; a cursor."""
    driver = connection.connection.driver_connection
    assert driver is not None
    try:
        return driver.execute(sql, parameters)
    except statements(connection).error_class as exc:
        raise _wrapped(connection, sql, parameters, exc) from exc


def run_many(connection: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """Execute `sql` once per parameter row (the driver batches them)."""
    driver = connection.connection.driver_connection
    assert driver is not None
    try:
        driver.cursor().executemany(sql, rows)
    except statements(connection).error_class as exc:
        raise _wrapped(connection, sql, rows, exc) from exc


def _wrapped(connection: Connection, sql: str, parameters: Any, exc: Exception) -> DBAPIError:
    dialect = connection.dialect
    return cast(
        DBAPIError,
        DBAPIError.instance(
            sql,
            parameters,
            exc,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            dialect=dialect,
        ),
    )
