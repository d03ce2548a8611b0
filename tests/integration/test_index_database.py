"""Index engines: URL spellings, the PostgreSQL pool and session settings."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Connection, Engine, QueuePool, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from dicomweb_server.index import database
from dicomweb_server.index.database import (
    create_index_engine,
    index_engine,
    is_postgresql_url,
    postgresql_url,
)
from dicomweb_server.services.archive import Archive
from dicomweb_server.settings import Settings
from tests.conftest import POSTGRES_URL


@pytest.mark.parametrize(
    "url",
    [
        "postgres://archive@db.example.org:5432/pacs",
        "postgresql://archive@db.example.org:5432/pacs",
        "postgresql+psycopg://archive@db.example.org:5432/pacs",
    ],
)
def test_every_postgresql_spelling_selects_psycopg_3(url: str) -> None:
    assert is_postgresql_url(url)
    engine = create_index_engine(url)  # no connection is made before first use
    assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")
    assert engine.url.host == "db.example.org" and engine.url.database == "pacs"
    assert engine.url.query["application_name"] == "dicomweb-server"
    engine.dispose()


def test_session_settings_extend_what_the_url_already_says() -> None:
    url = postgresql_url(
        "postgresql://u@h/db?options=-csearch_path%3Darchive&application_name=pacs-1",
        statement_timeout_ms=15000,
        application_name="dicomweb-server",
    )
    assert url.query["options"] == "-csearch_path=archive -c statement_timeout=15000"
    assert url.query["application_name"] == "pacs-1"
    assert "options" not in postgresql_url("postgres://u@h/db").query


def test_pool_settings_reach_the_postgresql_engine() -> None:
    settings = Settings(
        database_url="postgres://archive@db.example.org/pacs",
        database_pool_size=3,
        database_max_overflow=4,
        database_pool_timeout=5.5,
        database_statement_timeout_ms=2000,
        database_application_name="pacs-east",
    )
    engine = index_engine(settings)
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    assert (pool.size(), pool._max_overflow, pool.timeout()) == (3, 4, 5.5)
    # Connections are pinged after sitting idle (below), not at every checkout.
    assert not pool._pre_ping
    assert engine.url.query["options"] == "-c statement_timeout=2000"
    assert engine.url.query["application_name"] == "pacs-east"
    engine.dispose()


def test_sqlite_engine_from_settings_is_unchanged(tmp_path: Path) -> None:
    engine = index_engine(Settings(data_dir=tmp_path, database_pool_size=1))
    assert engine.dialect.name == "sqlite"
    assert engine.pool.size() == 8  # type: ignore[attr-defined]
    with engine.connect() as connection:
        assert connection.scalar(text("PRAGMA journal_mode")) == "wal"
    engine.dispose()


def test_sqlite_readers_cache_more_pages_without_relaxing_durability(tmp_path: Path) -> None:
    engine = index_engine(Settings(data_dir=tmp_path))
    with engine.connect() as connection:
        assert connection.scalar(text("PRAGMA cache_size")) == -8 * 1024
        assert connection.scalar(text("PRAGMA synchronous")) == 2  # FULL
        assert connection.scalar(text("PRAGMA journal_mode")) == "wal"
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="DICOMWEB_TEST_DATABASE_URL is not set")
@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_postgresql_sessions_carry_the_configured_settings(scheme: str) -> None:
    assert POSTGRES_URL
    url = make_url(POSTGRES_URL).set(drivername=scheme).render_as_string(hide_password=False)
    settings = Settings(
        database_url=url,
        database_statement_timeout_ms=200,
        database_application_name="dicomweb-server test",
    )
    engine = index_engine(settings)
    try:
        with engine.connect() as connection:
            assert connection.scalar(text("SHOW application_name")) == "dicomweb-server test"
            assert connection.scalar(text("SHOW statement_timeout")) == "200ms"
            with pytest.raises(OperationalError, match="statement timeout"):
                connection.execute(text("SELECT pg_sleep(2)"))
    finally:
        engine.dispose()


def _backend(connection: Connection) -> int:
    return int(connection.scalar(text("SELECT pg_backend_pid()")))


def _terminate(admin: Engine, pids: set[int]) -> None:
    """End server processes as a restart does, and wait until they are gone."""
    # Autocommit: within a transaction pg_stat_activity keeps showing its first snapshot.
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for pid in pids:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        deadline = time.monotonic() + 10
        while connection.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)"),
            {"pids": list(pids)},
        ):
            assert time.monotonic() < deadline, "the server processes did not end"
            time.sleep(0.01)


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="DICOMWEB_TEST_DATABASE_URL is not set")
def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pooled connection killed while idle is pinged, found dead and replaced: the request
    that takes it from the pool never sees the failure. A connection given back moments
    ago is handed out without a ping (no round trip before the request's first statement)."""
    assert POSTGRES_URL
    monkeypatch.setattr(database, "PING_AFTER_IDLE_SECONDS", 0.3)
    engine = create_index_engine(POSTGRES_URL, pool_size=1, max_overflow=0)
    pings: list[int] = []
    do_ping = engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(1)
        return do_ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    admin = create_index_engine(POSTGRES_URL)
    try:
        with engine.connect() as connection:
            first = _backend(connection)
        with engine.connect() as connection:
            assert _backend(connection) == first
        assert pings == []  # reused at once: not pinged

        _terminate(admin, {first})
        time.sleep(0.5)
        with engine.connect() as connection:  # pinged, found dead, replaced
            assert connection.scalar(text("SELECT 1")) == 1
            assert _backend(connection) != first
        assert pings == [1]
    finally:
        engine.dispose()
        admin.dispose()


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="DICOMWEB_TEST_DATABASE_URL is not set")
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_reads_run_outside_a_transaction_and_writes_inside_one(
    database_url: str, tmp_path: Path
) -> None:
    """Look-ups on PostgreSQL send no BEGIN and no ROLLBACK (each statement is its own
    transaction); a write on the same pooled connection afterwards is a transaction again."""
    archive = Archive.open(
        Settings(
            data_dir=tmp_path,
            database_url=database_url,
            database_pool_size=1,
            database_max_overflow=0,
        )
    )
    # now() is when the transaction began, statement_timestamp() when the statement did.
    same_start = text("SELECT now() = statement_timestamp()")
    try:
        with archive.reads() as connection:
            reader = _backend(connection)
            connection.execute(text("SELECT pg_sleep(0.02)"))
            assert connection.scalar(same_start)
            # No transaction open on the server either: nothing to roll back at the end.
            driver = connection.connection.driver_connection
            assert driver is not None
            assert driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with archive.write_engine.begin() as connection:
            assert _backend(connection) == reader  # the same pooled connection
            connection.execute(text("SELECT pg_sleep(0.02)"))
            assert not connection.scalar(same_start)
    finally:
        archive.close()


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="DICOMWEB_TEST_DATABASE_URL is not set")
def test_after_a_server_restart_one_failed_look_up_renews_the_whole_pool() -> None:
    """Connections used moments before the server dropped them are not pinged: the first
    look-up on one fails (answered 503), and the pool then replaces all of them."""
    assert POSTGRES_URL
    engine = create_index_engine(POSTGRES_URL, pool_size=2, max_overflow=0)
    admin = create_index_engine(POSTGRES_URL)
    try:
        with engine.connect() as one, engine.connect() as two:
            before = {_backend(one), _backend(two)}
        _terminate(admin, before)
        with pytest.raises(DBAPIError) as failed, engine.connect() as connection:
            connection.scalar(text("SELECT 1"))
        assert failed.value.connection_invalidated
        with engine.connect() as one, engine.connect() as two:
            assert {_backend(one), _backend(two)}.isdisjoint(before)
    finally:
        engine.dispose()
        admin.dispose()
