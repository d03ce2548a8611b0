"""Concurrent writers on one index, on SQLite and PostgreSQL.

Two stores that create the same study (or store the same instance) at the same time take
different paths per database: SQLite serialises writers at BEGIN IMMEDIATE, PostgreSQL lets
both run until the second's ``INSERT ... ON CONFLICT DO NOTHING`` waits for the first's
uncommitted row. Either way the second must find and reuse what the first created.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dicomweb_server.index.models import Instance, Series, Study
from dicomweb_server.index.records import build_record
from dicomweb_server.index.repository import LevelCache, StoredBlob, insert_instance
from dicomweb_server.services.archive import Archive
from dicomweb_server.settings import Settings
from tests.integration.qido_data import EXPLICIT_LE, instance

STUDY_UID, SERIES_UID = "1.2.826.0.1.3680043.10.543.9", "1.2.826.0.1.3680043.10.543.9.1"


@pytest.fixture
def archive(database_url: str, tmp_path: Path) -> Iterator[Archive]:
    archive = Archive.open(
        Settings(data_dir=tmp_path, database_url=database_url, audit_dir=tmp_path / "audit")
    )
    yield archive
    archive.close()


def _blob(sop: str) -> StoredBlob:
    return StoredBlob(f"blobs/{sop}", "0" * 64, 1, None, None, False)


def _store_while_another_is_open(archive: Archive, first_sop: str, second_sop: str) -> bool:
    """Insert `first_sop`, and `second_sop` from another thread before the first commits.

    Returns what the second insert returned (False: already stored).
    """
    outcome: list[bool] = []
    failure: list[BaseException] = []

    def second() -> None:
        try:
            with archive.write_engine.begin() as connection:
                record = build_record(instance(STUDY_UID, SERIES_UID, second_sop), EXPLICIT_LE)
                outcome.append(insert_instance(connection, record, _blob(second_sop), LevelCache()))
        except BaseException as error:
            failure.append(error)

    with archive.write_engine.connect() as connection:
        transaction = connection.begin()
        record = build_record(instance(STUDY_UID, SERIES_UID, first_sop), EXPLICIT_LE)
        assert insert_instance(connection, record, _blob(first_sop), LevelCache())
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        # The second writer waits for the first: at BEGIN IMMEDIATE (SQLite) or on the
        # study's unique key (PostgreSQL).
        assert thread.is_alive()
        transaction.commit()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if failure:
        raise failure[0]
    return outcome[0]


def _counts(archive: Archive) -> tuple[int, int, int]:
    with archive.sessions() as session:
        return (
            int(session.scalar(select(func.count()).select_from(Study)) or 0),
            int(session.scalar(select(func.count()).select_from(Series)) or 0),
            int(session.scalar(select(func.count()).select_from(Instance)) or 0),
        )


def test_concurrent_stores_into_one_new_study_share_its_rows(archive: Archive) -> None:
    assert _store_while_another_is_open(archive, f"{SERIES_UID}.1", f"{SERIES_UID}.2")
    assert _counts(archive) == (1, 1, 2)


def test_concurrent_stores_of_one_instance_store_it_once(archive: Archive) -> None:
    assert not _store_while_another_is_open(archive, f"{SERIES_UID}.1", f"{SERIES_UID}.1")
    assert _counts(archive) == (1, 1, 1)
