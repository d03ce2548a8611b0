"""The fast lane answers exactly as the full routes do, and only the requests it should.

Two archives hold the same instances, one with the lane and one without. Every request is
sent to both and the answers compared whole: status, body and headers (frame boundaries are
random per response and are normalised). A counter in front of the router shows which
requests the lane kept for itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import event
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomweb_server.api import qido
from dicomweb_server.api.fast_lane import FastLane
from dicomweb_server.app import create_app
from dicomweb_server.index import budget
from dicomweb_server.index.database import upgrade_schema
from dicomweb_server.settings import Settings
from tests.dicom_files import (
    bundled_bytes,
    dataset_from_bytes,
    make_ct,
    multipart,
    stow_content_type,
)
from tests.page_cache import evict_blobs

ROOT = "/dicom-web"
ANY_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES_AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


class _RouterCount:
    """Counts the requests that reach the application behind the lane."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


def _client(data_dir: Path, *, fast_lane: bool) -> TestClient:
    settings = Settings(data_dir=data_dir, auth="off", fast_lane=fast_lane)
    data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_schema(settings.resolved_database_url)
    return TestClient(create_app(settings), raise_server_exceptions=False)


def _lane_of(client: TestClient) -> FastLane:
    client.get("/healthz")  # builds the middleware stack
    layer: Any = client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(layer, FastLane):
        layer = layer.app
    return layer


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    study, series = generate_uid(), generate_uid()
    parts = [
        make_ct(study_uid=study, series_uid=series, instance_number=n, patient_id="FAST-1")
        for n in (2, 1)
    ]
    multiframe = make_ct(study_uid=study, series_uid=series, frames=3, instance_number=3)
    parts += [multiframe, bundled_bytes("SC_rgb_rle_2frame.dcm"), bundled_bytes("CT_small.dcm")]
    folder = tmp_path_factory.mktemp("lane")
    with (
        _client(folder / "fast", fast_lane=True) as fast,
        _client(folder / "full", fast_lane=False) as full,
    ):
        for client in (fast, full):
            response = client.post(
                f"{ROOT}/studies",
                content=multipart(parts),
                headers={"Content-Type": stow_content_type()},
            )
            assert response.status_code == 200, response.text
        counter = _RouterCount(_lane_of(fast).app)
        _lane_of(fast).app = counter
        yield {"fast": fast, "full": full, "parts": parts, "counter": counter}


def _paths(data: bytes) -> tuple[str, str, str]:
    ds = dataset_from_bytes(data)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def _normalised(response: Any) -> tuple[int, bytes, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k not in ("date", "server")}
    body = response.content
    found = re.search(r"boundary=([^;\s]+)", headers.get("content-type", ""))
    if found and found.group(1).startswith("dicomweb-") and len(found.group(1)) == 33:
        # A random boundary (new_boundary): the same in the body and the type.
        body = body.replace(found.group(1).encode(), b"BOUNDARY")
        headers["content-type"] = headers["content-type"].replace(found.group(1), "BOUNDARY")
        headers.pop("content-length", None)
    return response.status_code, body, headers


def _same(archives: dict[str, Any], path: str, accept: str | None, **extra: str) -> int:
    headers = {**({"Accept": accept} if accept else {}), **extra}
    fast = archives["fast"].get(path, headers=headers)
    full = archives["full"].get(path, headers=headers)
    assert _normalised(fast) == _normalised(full), (path, accept)
    return int(fast.status_code)


def _answered_by_lane(archives: dict[str, Any], path: str, accept: str | None) -> bool:
    counter: _RouterCount = archives["counter"]
    before = len(counter.paths)
    _same(archives, path, accept)
    return len(counter.paths) == before


@pytest.mark.parametrize(
    "accept",
    [
        ANY_DICOM,
        'multipart/related; type="application/dicom"',
        "application/dicom; transfer-syntax=*",
        "application/dicom",
        "*/*",
    ],
)
def test_single_instances_are_answered_alike(archives: dict[str, Any], accept: str) -> None:
    for data in archives["parts"]:
        study, series, sop = _paths(data)
        status = _same(archives, f"{ROOT}/studies/{study}/series/{series}/instances/{sop}", accept)
        assert status in (200, 406)


def test_stored_instances_and_frames_stay_in_the_lane(archives: dict[str, Any]) -> None:
    study, series, sop = _paths(archives["parts"][2])
    instance = f"{ROOT}/studies/{study}/series/{series}/instances/{sop}"
    assert _answered_by_lane(archives, instance, ANY_DICOM)
    assert _answered_by_lane(archives, instance + "/frames/2", FRAMES_AS_STORED)
    assert _answered_by_lane(archives, instance + "/metadata", "application/dicom+json")
    assert _answered_by_lane(archives, f"{ROOT}/studies/{study}/metadata", "*/*")
    xml = 'multipart/related; type="application/dicom+xml"'
    assert not _answered_by_lane(archives, f"{ROOT}/studies/{study}/metadata", xml)
    assert _answered_by_lane(archives, f"{ROOT}/studies?PatientID=FAST-1", None)
    assert _answered_by_lane(archives, f"{ROOT}/studies/{study}/series", None)
    # What the lane does not do goes to the routes: other syntaxes, several frames, ranges.
    assert not _answered_by_lane(archives, instance + "/frames/1,2", FRAMES_AS_STORED)
    assert not _answered_by_lane(archives, instance, "application/zip")
    assert _answered_by_lane(archives, instance + "/rendered", "image/jpeg")
    assert _answered_by_lane(archives, instance + "/frames/3/rendered", "image/png")
    assert not _answered_by_lane(archives, instance + "/rendered?window=40,400,LINEAR", "*/*")
    assert not _answered_by_lane(archives, instance + "/frames/1,2/rendered", "*/*")
    assert not _answered_by_lane(archives, f"{ROOT}/studies?PatientID=FAST-1&fuzzy=x", None)


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """What the application hands to worker threads (anyio's), in order."""
    found: list[object] = []
    real = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        found.append(func)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    return found


def test_bytes_in_memory_are_answered_on_the_event_loop_others_in_a_thread(
    archives: dict[str, Any], handed: list[object]
) -> None:
    study, series, sop = _paths(archives["parts"][2])
    instance = f"{ROOT}/studies/{study}/series/{series}/instances/{sop}"
    requests = [(instance + "/frames/2", FRAMES_AS_STORED), (instance, ANY_DICOM)]
    expected = [_normalised(archives["full"].get(p, headers={"Accept": a})) for p, a in requests]
    fast: TestClient = archives["fast"]
    counter: _RouterCount = archives["counter"]
    routed = len(counter.paths)

    for (path, accept), answer in zip(requests, expected, strict=True):
        fast.get(path, headers={"Accept": accept})  # read once: now in the page cache
        handed.clear()
        assert _normalised(fast.get(path, headers={"Accept": accept})) == answer
        assert handed == []
        evict_blobs(fast)  # a read would wait on the disk: a worker thread reads it
        assert _normalised(fast.get(path, headers={"Accept": accept})) == answer
        assert len(handed) == 1
    assert len(counter.paths) == routed  # all answered by the lane


def test_searches_run_on_the_event_loop_within_their_budget_else_in_a_thread(
    archives: dict[str, Any], handed: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    study, _, _ = _paths(archives["parts"][2])
    path = f"{ROOT}/studies?StudyInstanceUID={study}&includefield=all"
    expected = _normalised(archives["full"].get(path))
    assert expected[0] == 200
    fast: TestClient = archives["fast"]
    handed.clear()  # what the archive without the lane handed to threads
    assert _normalised(fast.get(path)) == expected
    assert handed == []
    # A search that overruns its budget in the index is stopped and run again in a thread
    # (this one is small: no budget, and the clock looked at from the first step).
    monkeypatch.setattr(qido, "LOOP_SEARCH_SECONDS", -1.0)
    monkeypatch.setattr(budget, "_STEPS", 1)
    assert _normalised(fast.get(path)) == expected
    assert len(handed) == 1


def test_the_event_loop_looks_up_on_its_own_connection(archives: dict[str, Any]) -> None:
    """Never one of the pool that worker threads use: it must not wait for them to give one
    back (a pool exhausted by slow searches would hold up every request of the worker)."""
    archive = archives["fast"].app.state.archive
    counts = {"pool": 0, "loop": 0}

    def counter(name: str) -> Any:
        def count(*_args: Any) -> None:
            counts[name] += 1

        return count

    study, series, sop = _paths(archives["parts"][2])
    instance = f"{ROOT}/studies/{study}/series/{series}/instances/{sop}"
    requests = [(instance + "/frames/2", "*/*"), (instance, ANY_DICOM)]
    for path, accept in requests:  # the bytes in the page cache, whatever ran before
        assert archives["fast"].get(path, headers={"Accept": accept}).is_success
    listeners = [(archive.engine, counter("pool")), (archive.loop_engine, counter("loop"))]
    for engine, listener in listeners:
        event.listen(engine, "checkout", listener)
    try:
        for path, accept in requests:
            assert archives["fast"].get(path, headers={"Accept": accept}).is_success
    finally:
        for engine, listener in listeners:
            event.remove(engine, "checkout", listener)
    assert counts == {"pool": 0, "loop": 2}


@pytest.mark.parametrize(
    "accept",
    [
        FRAMES_AS_STORED,
        'multipart/related; type="application/octet-stream"',
        "application/octet-stream; transfer-syntax=*",
        'multipart/related; type="image/x-dicom-rle"',
        "image/jls",
        "*/*",
        None,
    ],
)
def test_frames_are_answered_alike(archives: dict[str, Any], accept: str | None) -> None:
    for data in archives["parts"]:
        study, series, sop = _paths(data)
        instance = f"{ROOT}/studies/{study}/series/{series}/instances/{sop}"
        for frame in ("1", "2", "0", "4", "007"):
            _same(archives, f"{instance}/frames/{frame}", accept)


def test_metadata_and_errors_are_answered_alike(archives: dict[str, Any]) -> None:
    study, series, sop = _paths(archives["parts"][0])
    for accept in ("application/dicom+json", "application/json", None, "text/html"):
        _same(archives, f"{ROOT}/studies/{study}/metadata", accept)
        _same(archives, f"{ROOT}/studies/{study}/series/{series}/metadata", accept)
        _same(archives, f"{ROOT}/studies/{study}/series/{series}/instances/{sop}/metadata", accept)
    unknown = generate_uid()
    assert _same(archives, f"{ROOT}/studies/{unknown}/metadata", "application/dicom+json") == 404
    assert (
        _same(archives, f"{ROOT}/studies/{study}/series/{series}/instances/{unknown}", ANY_DICOM)
        == 404
    )
    assert (
        _same(archives, f"{ROOT}/studies/1.2.x/series/{series}/instances/{sop}", ANY_DICOM) == 400
    )
    assert (
        _same(
            archives,
            f"{ROOT}/studies/{study}/series/{series}/instances/{sop}",
            ANY_DICOM,
            Range="bytes=0-9",
        )
        == 200
    )


@pytest.mark.parametrize(
    "query",
    [
        "/studies",
        "/studies?PatientID=FAST-1",
        "/studies?PatientID=FAST-1&includefield=all",
        "/studies?PatientName=Doe*&limit=1",
        "/studies?ModalitiesInStudy=CT&includefield=00081030",
        "/series?Modality=CT",
        "/instances?limit=2&offset=1",
        "/studies?NoSuchKey=1",
        "/studies?limit=x",
        "/studies?PatientID=NOBODY",
    ],
)
def test_searches_are_answered_alike(archives: dict[str, Any], query: str) -> None:
    _same(archives, ROOT + query, "application/dicom+json")
    _same(archives, ROOT + query, None)


def test_scoped_searches_are_answered_alike(archives: dict[str, Any]) -> None:
    study, series, _ = _paths(archives["parts"][0])
    _same(archives, f"{ROOT}/studies/{study}/series", None)
    _same(archives, f"{ROOT}/studies/{study}/instances", None)
    _same(archives, f"{ROOT}/studies/{study}/series/{series}/instances", None)
    _same(archives, f"{ROOT}/studies/{study}/series/{series}/instances?InstanceNumber=2", None)
    _same(archives, f"{ROOT}/studies/bad/series", None)
    _same(archives, f"{ROOT}/studies/{study}/studies", None)
    _same(archives, f"{ROOT}/studies/{study}/series/{series}/series", None)


@pytest.mark.parametrize("accept", ["image/jpeg", "image/png", "image/gif", "*/*", "text/html"])
def test_rendered_images_are_answered_alike(archives: dict[str, Any], accept: str) -> None:
    for data in archives["parts"]:
        study, series, sop = _paths(data)
        instance = f"{ROOT}/studies/{study}/series/{series}/instances/{sop}"
        _same(archives, f"{instance}/rendered", accept)
        for frame in ("1", "3", "0", "9"):
            _same(archives, f"{instance}/frames/{frame}/rendered", accept)


def _same_store(
    archives: dict[str, Any], path: str, body: bytes, content_type: str | None, **extra: str
) -> tuple[int, bool]:
    """POST the same body to both archives; (status, whether the lane answered it)."""
    headers = {**({"Content-Type": content_type} if content_type else {}), **extra}
    counter: _RouterCount = archives["counter"]
    before = len(counter.paths)
    fast = archives["fast"].post(path, content=body, headers=headers)
    kept = len(counter.paths) == before
    full = archives["full"].post(path, content=body, headers=headers)
    assert _normalised(fast) == _normalised(full), (path, content_type, fast.text)
    return int(fast.status_code), kept


def test_stores_are_answered_alike_and_stay_in_the_lane(archives: dict[str, Any]) -> None:
    study = generate_uid()
    new = make_ct(study_uid=study, series_uid=generate_uid(), patient_id="FAST-2")
    other = make_ct(patient_id="FAST-3")
    dicom = stow_content_type()
    studies = f"{ROOT}/studies"
    cases: list[tuple[str, bytes, str | None, dict[str, str], int]] = [
        (studies, multipart([new]), dicom, {}, 200),
        (studies, multipart([new]), dicom, {}, 200),  # already stored: the same bytes
        (f"{studies}/{study}", multipart([other]), dicom, {}, 409),  # another study
        (studies, multipart([other, b"not DICOM"]), dicom, {}, 202),
        (studies, multipart([new]), dicom, {"Accept": "application/dicom+xml"}, 200),
        (studies, multipart([new]), dicom, {"Accept": "text/html"}, 406),
        (f"{studies}/1.2.x", multipart([new]), dicom, {}, 400),
        (studies, multipart([new]), "application/dicom", {}, 415),
        (studies, multipart([new]), 'multipart/related; type="application/dicom"', {}, 400),
        (studies, multipart([new]), None, {}, 415),
        (studies, b"no parts here", dicom, {}, 400),
        (studies, multipart([new])[:-200], dicom, {}, 400),  # ends inside its only part
    ]
    for path, body, content_type, extra, expected in cases:
        status, kept = _same_store(archives, path, body, content_type, **extra)
        assert (status, kept) == (expected, True), (path, content_type, extra)
    # The same instances are stored in both, and found alike.
    _same(archives, f"{ROOT}/studies?PatientID=FAST-2", None)
    _same(archives, f"{ROOT}/studies?PatientID=FAST-3", None)
