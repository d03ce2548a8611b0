"""SQLite write transactions queue on a file lock, across threads and processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from dicomweb_server.index.database import create_index_engine
from dicomweb_server.index.writer_lock import WriterLock, WriterLockTimeout
from dicomweb_server.services.archive import _begin_immediate


def _write_engine(path: Path, busy_timeout_ms: int = 30000):  # type: ignore[no-untyped-def]
    engine = create_index_engine(
        f"sqlite:///{path}", busy_timeout_ms=busy_timeout_ms, writer_lock=True
    )
    _begin_immediate(engine)
    return engine


def test_a_writer_waits_for_the_other_to_commit_and_then_finds_sqlite_free(
    tmp_path: Path,
) -> None:
    database = tmp_path / "index.db"
    engine = _write_engine(database)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (v INTEGER)"))
    order: list[str] = []
    holding = threading.Event()

    def first() -> None:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (1)"))
            holding.set()
            time.sleep(0.3)
            order.append("first commits")

    thread = threading.Thread(target=first)
    thread.start()
    holding.wait(5)
    started = time.monotonic()
    with engine.begin() as connection:
        waited = time.monotonic() - started
        order.append("second begins")
        connection.execute(text("INSERT INTO t VALUES (2)"))
    thread.join()
    assert order == ["first commits", "second begins"]
    assert 0.15 < waited < 5
    assert not (tmp_path / "index.db-writer.lock").read_bytes()  # a lock, never data
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM t")).scalar() == 2
    engine.dispose()


def test_a_rolled_back_or_failed_transaction_releases_the_lock(tmp_path: Path) -> None:
    engine = _write_engine(tmp_path / "index.db", busy_timeout_ms=500)
    with pytest.raises(Exception, match="no such table"), engine.begin() as connection:
        connection.execute(text("INSERT INTO missing VALUES (1)"))
    # Were the lock still held, this would time out after 0.5 s.
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (v INTEGER)"))
    engine.dispose()


def test_a_stuck_writer_makes_the_wait_fail_after_the_busy_timeout(tmp_path: Path) -> None:
    path = str(tmp_path / "lock")
    holder, waiter = WriterLock(path, 1.0), WriterLock(path, 0.2)
    holder.acquire()
    started = time.monotonic()
    with pytest.raises(WriterLockTimeout, match="database is locked"):
        waiter.acquire()
    assert 0.2 <= time.monotonic() - started < 2
    holder.release()
    waiter.acquire()
    assert waiter.held
    waiter.close()
    holder.close()


def test_a_dead_process_never_leaves_the_lock_held(tmp_path: Path) -> None:
    path = str(tmp_path / "lock")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from dicomweb_server.index.writer_lock import WriterLock; "
            f"WriterLock({path!r}, 5).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        blocked = WriterLock(path, 0.1)
        with pytest.raises(WriterLockTimeout):
            blocked.acquire()
        child.kill()
        child.wait()
        waiter = WriterLock(path, 5)
        waiter.acquire()
        assert waiter.held
        waiter.close()
        blocked.close()
    finally:
        child.kill()
        child.wait()


def test_a_timed_out_wait_is_an_index_error_and_leaves_the_engine_usable(tmp_path: Path) -> None:
    """The app answers SQLAlchemy's DBAPIError with a 503, as for SQLite's own lock time-out."""
    database = tmp_path / "index.db"
    engine = _write_engine(database, busy_timeout_ms=200)
    holder = WriterLock(f"{database}-writer.lock", 1.0)
    holder.acquire()
    try:
        with pytest.raises(DBAPIError, match="database is locked"), engine.begin():
            pass
    finally:
        holder.close()
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (v INTEGER)"))
    engine.dispose()
