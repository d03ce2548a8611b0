"""PostgreSQL planner statistics kept fresh by the archive when autovacuum is off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from dicomweb_server.index.statistics import TABLES, PlannerStatistics
from dicomweb_server.services.archive import Archive
from dicomweb_server.services.importer import import_paths
from dicomweb_server.settings import Settings
from tests.dicom_files import make_ct


@pytest.fixture
def archive(database_url: str, tmp_path: Path) -> Iterator[Archive]:
    opened = Archive.open(
        Settings(data_dir=tmp_path, database_url=database_url, audit_dir=tmp_path / "audit")
    )
    yield opened
    opened.close()


def _analyzed_tables(archive: Archive) -> set[str]:
    with archive.engine.connect() as connection:
        return set(
            connection.scalars(
                text(
                    "SELECT relname FROM pg_stat_user_tables WHERE schemaname = "
                    "current_schema() AND (last_analyze IS NOT NULL OR analyze_count > 0)"
                )
            )
        )


def _store(archive: Archive, folder: Path, count: int) -> None:
    folder.mkdir()
    study = "1.2.826.0.1.3680043.10.543.9.1"
    for number in range(count):
        (folder / f"{number}.dcm").write_bytes(
            make_ct(study_uid=study, series_uid=f"{study}.{number % 3}", instance_number=number)
        )
    summary = import_paths(archive, [folder])
    assert summary.stored == count


def test_keeper_follows_the_servers_autovacuum_setting(archive: Archive) -> None:
    if archive.engine.dialect.name != "postgresql":
        assert archive.statistics is None  # SQLite plans need no gathered statistics
        return
    with archive.engine.connect() as connection:
        autovacuum = connection.scalar(text("SELECT current_setting('autovacuum')"))
    assert (archive.statistics is None) == (autovacuum == "on")


def test_stores_trigger_analyze_once_enough_rows_arrived(archive: Archive, tmp_path: Path) -> None:
    if archive.engine.dialect.name != "postgresql":
        pytest.skip("ANALYZE statistics are PostgreSQL's")
    keeper = PlannerStatistics(archive.write_engine, min_rows=12, fraction=0.1)
    archive.statistics = keeper
    _store(archive, tmp_path / "first", 6)
    keeper.wait()
    assert keeper.runs == 0  # below the threshold: nothing analyzed yet
    assert not _analyzed_tables(archive) & set(TABLES)

    _store(archive, tmp_path / "second", 8)
    keeper.wait(timeout=30)
    assert keeper.runs == 1
    assert set(TABLES) <= _analyzed_tables(archive)
    with archive.engine.connect() as connection:
        estimate = connection.scalar(
            text("SELECT reltuples FROM pg_class WHERE oid = 'instances'::regclass")
        )
    assert estimate == 14  # the planner now knows how many instances there are
