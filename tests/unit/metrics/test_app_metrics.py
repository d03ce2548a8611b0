"""Metrics inside one application process (``create_app`` with no set-up): what each request
counts, backend errors before and after a response started, and the settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy.exc import OperationalError

from dicomweb_server.app import create_app
from dicomweb_server.index.database import upgrade_schema
from dicomweb_server.settings import Settings
from tests.dicom_files import make_ct, multipart, stow_content_type
from tests.prometheus_text import Scrape

ROOT = "/dicom-web"


def client_for(data_dir: Path, **overrides: Any) -> TestClient:
    settings = Settings(data_dir=data_dir, **{"auth": "off", **overrides})
    data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_schema(settings.resolved_database_url)
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with client_for(tmp_path / "data") as client:
        yield client


def scrape(client: TestClient) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape.parse(response.text)


def store(client: TestClient, *parts: bytes) -> int:
    response = client.post(
        f"{ROOT}/studies",
        content=multipart(list(parts)),
        headers={"Content-Type": stow_content_type()},
    )
    return response.status_code


def test_two_applications_in_one_process_count_separately(tmp_path: Path) -> None:
    with client_for(tmp_path / "a") as first, client_for(tmp_path / "b") as second:
        assert first.get(f"{ROOT}/studies").status_code == 204
        assert scrape(first).requests("qido", 204) == 1
        assert scrape(second).requests("qido", 204) == 0


def test_stow_counts_part_bytes_and_each_parts_result(client: TestClient) -> None:
    first, second = make_ct(), make_ct()
    assert store(client, first, second) == 200
    assert store(client, first, b"not DICOM at all") == 202
    after = scrape(client)
    assert after.value("dicomweb_stow_received_bytes_total") == (
        len(first) + len(second) + len(first) + len(b"not DICOM at all")
    )
    assert after.value("dicomweb_stow_instances_total", result="stored") == 2
    assert after.value("dicomweb_stow_instances_total", result="already_present") == 1
    assert after.value("dicomweb_stow_instances_total", result="failed") == 1
    assert after.requests("stow", 200) == 1 and after.requests("stow", 202) == 1
    assert after.observations("stow") == 2


def test_every_request_is_counted_once_and_timed(client: TestClient) -> None:
    client.get(f"{ROOT}/studies")
    client.get(f"{ROOT}/studies/{generate_uid()}/metadata")
    client.get("/no-such-path")
    client.get("/healthz")
    after = scrape(client)
    assert after.requests("qido", 204) == 1
    assert after.requests("metadata", 404) == 1
    assert after.requests("unrouted", 404) == 1
    assert after.requests("probe", 200) == 1
    for transaction in ("qido", "metadata", "unrouted", "probe"):
        assert after.observations(transaction) == 1
        buckets = after.value(
            "dicomweb_http_request_duration_seconds_bucket", transaction=transaction, le="10.0"
        )
        assert buckets == 1  # a quick request falls in every bucket up to 10 s
    # The scrape that produced this is the only request in flight.
    assert after.value("dicomweb_http_requests_in_flight") == 1
    assert scrape(client).requests("metrics", 200) == 1


def test_an_index_error_is_counted_where_it_is_answered(client: TestClient) -> None:
    archive = client.app.state.archive  # type: ignore[attr-defined]

    def broken(*_args: object, **_kwargs: object) -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    archive.reads = broken  # type: ignore[method-assign]  # searches read through it
    try:
        response = client.get(f"{ROOT}/studies")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"  # a client knows when to try again
    finally:
        del archive.reads
    after = scrape(client)
    assert after.value("dicomweb_index_errors_total") == 1
    assert after.value("dicomweb_blob_store_errors_total") == 0
    assert after.requests("qido", 503) == 1


def test_a_blob_store_error_is_counted_before_and_after_the_response_started(
    client: TestClient,
) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    assert store(client, make_ct(study_uid=study, series_uid=series, sop_uid=sop)) == 200
    blobs = client.app.state.archive.blobs  # type: ignore[attr-defined]
    path = f"{ROOT}/studies/{study}/series/{series}/instances/{sop}"

    def unreadable(*_args: object, **_kwargs: object) -> bytes:
        raise OSError(5, "Input/output error")

    def cut_short(*_args: object, **_kwargs: object) -> Iterator[bytes]:
        yield b"\0" * 128
        raise OSError(5, "Input/output error")

    # The disk fails: reads from it and from its cache alike.
    blobs.read_range, blobs.read_range_now, blobs.iter_range = unreadable, unreadable, cut_short
    try:
        frame = client.get(f"{path}/frames/1", headers={"Accept": "application/octet-stream"})
        assert frame.status_code == 503
        assert frame.headers["retry-after"] == "5"
        # A whole instance is read before the response starts: a clean 503.
        whole = client.get(path, headers={"Accept": "application/dicom; transfer-syntax=*"})
        assert whole.status_code == 503
        assert whole.headers["retry-after"] == "5"
        # A range streams: the status and Content-Length went out before the read failed,
        # so the body ends early.
        cut = client.get(
            path, headers={"Accept": "application/dicom; transfer-syntax=*", "Range": "bytes=0-"}
        )
        assert cut.status_code == 206
        assert len(cut.content) < int(cut.headers["content-length"])
    finally:
        del blobs.read_range, blobs.read_range_now, blobs.iter_range
    after = scrape(client)
    assert after.value("dicomweb_blob_store_errors_total") == 3
    assert after.value("dicomweb_index_errors_total") == 0
    assert after.requests("frames", 503) == 1
    assert after.requests("wado-instance", 503) == 1
    assert after.requests("wado-instance", 206) == 1  # the status that went out


def test_metrics_off_removes_route_and_counting(tmp_path: Path) -> None:
    with client_for(tmp_path / "data", metrics=False) as client:
        assert client.app.state.metrics is None  # type: ignore[attr-defined]
        assert client.get("/metrics").status_code == 404


def test_environment_switches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DICOMWEB_METRICS", "off")
    monkeypatch.setenv("DICOMWEB_METRICS_PUBLIC", "true")
    settings = Settings(data_dir=tmp_path)
    assert settings.metrics is False and settings.metrics_public is True
    assert Settings(data_dir=tmp_path, _env_file=None).metrics is False
    monkeypatch.delenv("DICOMWEB_METRICS")
    monkeypatch.delenv("DICOMWEB_METRICS_PUBLIC")
    defaults = Settings(data_dir=tmp_path)
    assert defaults.metrics is True and defaults.metrics_public is False
