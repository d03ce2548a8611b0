"""Index engines: URL spellings, the PostgreSQL pool and session settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import QueuePool, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from dicomweb_server.index.database import (
    create_index_engine,
    index_engine,
    is_postgresql_url,
    postgresql_url,
)
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
    assert pool._pre_ping
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
