"""Fixtures shared by all tests: migrated databases on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

from dicomweb_server.index.database import upgrade_schema

POSTGRES_URL = os.environ.get("DICOMWEB_TEST_DATABASE_URL")


def _postgres_schema_url(base_url: str) -> tuple[str, str]:
    """A URL whose connections use a fresh schema, so test runs never see each other's rows."""
    schema = f"t_{secrets.token_hex(6)}"
    engine = create_engine(base_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}options={quote(f'-csearch_path={schema}')}", schema


def _drop_postgres_schema(base_url: str, schema: str) -> None:
    engine = create_engine(base_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def _backends() -> list[object]:
    backends: list[object] = ["sqlite"]
    backends.append(
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(
                not POSTGRES_URL, reason="DICOMWEB_TEST_DATABASE_URL is not set"
            ),
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
