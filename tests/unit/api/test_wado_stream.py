"""A series or study streams each stored instance from memory when the store has it there,
and through a worker thread when reading it would wait on the disk: the same answer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from dicomweb_server.api import wado
from dicomweb_server.app import create_app
from dicomweb_server.index.database import upgrade_schema
from dicomweb_server.settings import Settings
from tests.dicom_files import make_ct, multipart, split_multipart, stow_content_type

ROOT = "/dicom-web"
ANY_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
def series(tmp_path: Path) -> Iterator[tuple[TestClient, str, list[bytes]]]:
    settings = Settings(data_dir=tmp_path / "data", auth="off")
    (tmp_path / "data").mkdir()
    upgrade_schema(settings.resolved_database_url)
    study, series_uid = generate_uid(), generate_uid()
    parts = [make_ct(study_uid=study, series_uid=series_uid, instance_number=n) for n in (1, 2, 3)]
    with TestClient(create_app(settings)) as client:
        response = client.post(
            f"{ROOT}/studies",
            content=multipart(parts),
            headers={"Content-Type": stow_content_type()},
        )
        assert response.status_code == 200, response.text
        yield client, f"{ROOT}/studies/{study}/series/{series_uid}", parts


def _evict_blobs(client: TestClient) -> None:
    """Drop every stored blob's pages from the page cache, as memory pressure would."""
    root: Path = client.app.state.archive.blobs.root  # type: ignore[attr-defined]
    for path in root.rglob("*"):
        if path.is_file() and ".staging" not in path.parts:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _instances(response: Any) -> list[bytes]:
    assert response.status_code == 200, response.text
    return sorted(
        data for _, data in split_multipart(response.content, response.headers["content-type"])
    )


def test_instances_in_memory_stream_without_a_thread_others_through_one(
    series: tuple[TestClient, str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, path, parts = series
    threaded: list[object] = []
    real = wado.iterate_in_threadpool

    def counted(iterator: Any) -> Any:
        threaded.append(iterator)
        return real(iterator)

    monkeypatch.setattr(wado, "iterate_in_threadpool", counted)
    client.get(path, headers={"Accept": ANY_DICOM})  # read once: now in the page cache
    threaded.clear()
    assert _instances(client.get(path, headers={"Accept": ANY_DICOM})) == sorted(parts)
    assert threaded == []

    _evict_blobs(client)
    assert _instances(client.get(path, headers={"Accept": ANY_DICOM})) == sorted(parts)
    assert len(threaded) == len(parts)  # each instance read by a worker thread
