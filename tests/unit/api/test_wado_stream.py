"""A series or study streams each stored instance (and a frame list each frame) from memory
when the store has it there, and through a worker thread when reading it would wait on the
disk: the same answer either way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from dicomweb_server.api import frames, wado
from dicomweb_server.app import create_app
from dicomweb_server.index.database import upgrade_schema
from dicomweb_server.settings import Settings
from tests.dicom_files import (
    dataset_from_bytes,
    make_ct,
    multipart,
    split_multipart,
    stow_content_type,
)
from tests.page_cache import evict_blobs

ROOT = "/dicom-web"
ANY_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
def series(tmp_path: Path) -> Iterator[tuple[TestClient, str, list[bytes]]]:
    settings = Settings(data_dir=tmp_path / "data", auth="off")
    (tmp_path / "data").mkdir()
    upgrade_schema(settings.resolved_database_url)
    study, series_uid = generate_uid(), generate_uid()
    parts = [make_ct(study_uid=study, series_uid=series_uid, instance_number=n) for n in (1, 2)]
    parts.append(make_ct(study_uid=study, series_uid=series_uid, instance_number=3, frames=4))
    with TestClient(create_app(settings)) as client:
        response = client.post(
            f"{ROOT}/studies",
            content=multipart(parts),
            headers={"Content-Type": stow_content_type()},
        )
        assert response.status_code == 200, response.text
        yield client, f"{ROOT}/studies/{study}/series/{series_uid}", parts


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

    evict_blobs(client)
    assert _instances(client.get(path, headers={"Accept": ANY_DICOM})) == sorted(parts)
    assert len(threaded) == len(parts)  # each instance read by a worker thread


def test_frames_of_a_list_in_memory_are_read_without_a_thread(
    series: tuple[TestClient, str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, path, parts = series
    multiframe = dataset_from_bytes(parts[2])
    url = f"{path}/instances/{multiframe.SOPInstanceUID}/frames/1,2,3,4"
    accept = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
    expected = [data for _, data in split_multipart(*_body(client.get(url, headers=accept)))]
    assert len(expected) == 4

    delivered: list[object] = []
    real = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        if func is frames._deliver:
            delivered.append(args[-1])
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    answer = client.get(url, headers=accept)
    assert [data for _, data in split_multipart(*_body(answer))] == expected
    assert delivered == []  # all in memory: read on the event loop

    # A store that has nothing in memory (object storage, say): the frames after the first
    # (read with the look-up) are read by a worker thread each.
    blobs = client.app.state.archive.blobs  # type: ignore[attr-defined]
    monkeypatch.setattr(blobs, "read_range_now", lambda *_args: None)
    answer = client.get(url, headers=accept)
    assert [data for _, data in split_multipart(*_body(answer))] == expected
    assert delivered == [2, 3, 4]


def _body(response: Any) -> tuple[bytes, str]:
    assert response.status_code == 200, response.text
    return response.content, response.headers["content-type"]
