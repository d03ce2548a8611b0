"""Deleting a study larger than SQLite's bound-parameter limit (32766) in one go."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from dicomweb_server.dicom.transfer_syntax import EXPLICIT_VR_LITTLE_ENDIAN
from dicomweb_server.index import lookup, repository
from dicomweb_server.index.models import BlobIntent, Instance, Study
from dicomweb_server.index.records import build_record
from dicomweb_server.services import delete as delete_service
from dicomweb_server.services.archive import Archive
from dicomweb_server.settings import Settings


def _metadata(study: str, series: str, index: int) -> dict[str, object]:
    return {
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00080018": {"vr": "UI", "Value": [f"{series}.{index}"]},
        "0020000D": {"vr": "UI", "Value": [study]},
        "0020000E": {"vr": "UI", "Value": [series]},
    }


def test_delete_study_with_70000_instances(database_url: str, tmp_path: Path) -> None:
    archive = Archive.open(Settings(data_dir=tmp_path, database_url=database_url))
    try:
        study, series = "1.2.826.0.1.3680043.10.9.1", "1.2.826.0.1.3680043.10.9.1.1"
        # Rows go in as STOW's committer writes them: the series resolved once, then
        # multi-row inserts (one statement per instance took most of this test's time).
        with archive.write_engine.begin() as connection:
            cache = repository.LevelCache()
            rows = [
                (
                    build_record(_metadata(study, series, index), EXPLICIT_VR_LITTLE_ENDIAN),
                    repository.StoredBlob(f"k/{index}", "0" * 64, 1, None, None, False),
                )
                for index in range(70000)
            ]
            series_pk = repository.series_key(connection, rows[0][0], cache)
            for start in range(0, len(rows), 5000):
                chunk = [(series_pk, record, blob) for record, blob in rows[start : start + 5000]]
                assert all(repository.insert_instances(connection, chunk))
        assert delete_service.delete(archive, study) == 70000
        with archive.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == 0
            assert session.scalar(select(func.count()).select_from(Study)) == 0
            assert session.scalar(select(func.count()).select_from(BlobIntent)) == 0
            assert lookup.find_instances(session, study) == []
            assert repository.referenced_keys(session, [f"k/{i}" for i in range(70000)]) == set()
    finally:
        archive.close()
