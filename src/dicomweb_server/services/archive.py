"""The archive's long-lived resources, opened once per process and shared by every service."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from dicomweb_server.index.database import create_index_engine, index_engine, session_factory
from dicomweb_server.index.statistics import PlannerStatistics
from dicomweb_server.index.writer_lock import WriterLockTimeout
from dicomweb_server.services.leases import WorkerLease
from dicomweb_server.settings import Settings
from dicomweb_server.storage import BlobStore, open_blob_store


def _begin_immediate(engine: Engine) -> None:
    """Make SQLite write transactions take the write lock at BEGIN.

    A deferred SQLite transaction that reads and then writes fails at once with "database is
    locked" when another writer committed meanwhile; BEGIN IMMEDIATE waits for the lock (up to
    the busy timeout) instead, so concurrent stores queue rather than fail.
    """

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _immediate(connection):  # type: ignore[no-untyped-def]
        # Writers of every process queue on a file lock first (index/writer_lock.py); the
        # lock goes with the transaction's commit or rollback.
        driver = connection.connection.driver_connection
        acquire = getattr(driver, "acquire_writer_lock", None)
        if acquire is not None:
            try:
                acquire()
            except WriterLockTimeout as timeout:
                # As SQLite's own "database is locked": an index error (503), not a bug.
                raise OperationalError("BEGIN IMMEDIATE", None, timeout) from timeout
        try:
            # On the driver itself: through exec_driver_sql it cost as much as a statement.
            driver.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            if acquire is not None:
                driver.writer_lock.release()
            if isinstance(exc, sqlite3.Error):
                raise DBAPIError.instance("BEGIN IMMEDIATE", None, exc, sqlite3.Error) from exc
            raise


@dataclass
class Archive:
    """Settings, index engines and the blob store of one running archive."""

    settings: Settings
    engine: Engine
    write_engine: Engine
    sessions: sessionmaker[Session]
    write_sessions: sessionmaker[Session]
    blobs: BlobStore
    lease: WorkerLease
    #: Keeps PostgreSQL's planner statistics fresh where autovacuum is off (else None).
    statistics: PlannerStatistics | None = None
    #: SQLite only: the event loop's own connection for the look-ups it makes itself.
    loop_engine: Engine | None = None

    def reads(self, *, now: bool = False) -> Connection:
        """A connection for read-only look-ups (use it as a context manager); on PostgreSQL
        in autocommit mode, so nothing may be written through it.

        Retrieval and search run a few prebuilt statements per request; on a plain
        connection that costs well under half the CPU of an ORM session.

        ``now``: for the event loop's own look-ups (see :attr:`index_in_process`). They use a
        connection of their own, which no thread holds and which never waits on a lock
        (SQLite's busy time-out is 0): the event loop must not wait for worker threads to
        give a pooled connection back, nor for a writer.
        """
        if now and self.loop_engine is not None:
            return self.loop_engine.connect()
        connection = self.engine.connect()
        if self.engine.dialect.name == "postgresql":
            # No transaction around the look-ups: at READ COMMITTED each statement reads its
            # own snapshot either way, and a transaction only added a BEGIN and a ROLLBACK,
            # two round trips to the server, to every request.
            connection.execution_options(isolation_level="AUTOCOMMIT")
        return connection

    @property
    def index_in_process(self) -> bool:
        """Whether index look-ups run in this process (SQLite, with its pages mostly in
        memory) rather than wait on a server: only then does the event loop make them."""
        return self.loop_engine is not None

    @property
    def worker_id(self) -> str:
        """This process's lease, which owns the intents it writes."""
        return self.lease.worker_id

    @classmethod
    def open(cls, settings: Settings) -> Archive:
        engine = index_engine(settings)
        loop_engine: Engine | None = None
        if engine.dialect.name == "sqlite":
            write_engine = index_engine(settings, writer_lock=True)
            _begin_immediate(write_engine)
            loop_engine = create_index_engine(settings.resolved_database_url, busy_timeout_ms=0)
        else:
            write_engine = engine
        blobs = open_blob_store(settings)
        write_sessions = session_factory(write_engine)
        lease = WorkerLease(write_sessions, blobs, settings.worker_lease_seconds)
        lease.register()
        blobs.claim_staging(lease.worker_id)
        lease.start()
        return cls(
            settings=settings,
            engine=engine,
            write_engine=write_engine,
            sessions=session_factory(engine),
            write_sessions=write_sessions,
            blobs=blobs,
            lease=lease,
            statistics=PlannerStatistics.for_engine(write_engine),
            loop_engine=loop_engine,
        )

    def close(self) -> None:
        if self.statistics is not None:
            self.statistics.wait()
        self.lease.stop()
        self.blobs.release_staging()
        self.engine.dispose()
        if self.loop_engine is not None:
            self.loop_engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()
