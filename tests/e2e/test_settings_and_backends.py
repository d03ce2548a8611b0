"""Behaviour that depends on settings or on the index backend, each on its own server."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from tests.conftest import POSTGRES_URL, _drop_postgres_schema, _postgres_schema_url
from tests.dicom_files import (
    bundled_bytes,
    dataset_from_bytes,
    instance_path,
    make_ct,
    multipart,
    split_multipart,
    stow_content_type,
)
from tests.e2e.server import ServerProcess, staged_files, store_concurrently

ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def store(http: httpx.Client, parts: list[bytes]) -> httpx.Response:
    return http.post(
        "/studies", content=multipart(parts), headers={"Content-Type": stow_content_type()}
    )


def fetch(http: httpx.Client, data: bytes) -> bytes:
    response = http.get(instance_path(data), headers={"Accept": ANY})
    assert response.status_code == 200, response.text
    return next(iter(split_multipart(response.content, response.headers["content-type"])))[1]


def started(tmp_path: Path, **env: str) -> ServerProcess:
    server = ServerProcess(tmp_path / "data", env=env)
    server.start()
    return server


def test_overwrite_when_allowed(tmp_path: Path) -> None:
    server = started(tmp_path, DICOMWEB_ALLOW_OVERWRITE="true")
    try:
        with httpx.Client(base_url=server.root) as http:
            first = make_ct()
            assert store(http, [first]).status_code == 200
            ds = dataset_from_bytes(first)
            ds.PatientName = "Corrected^Name"
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            second = buffer.getvalue()
            assert store(http, [second]).status_code == 200
            assert fetch(http, second) == second
            blobs = [
                p
                for p in (server.data_dir / "blobs").rglob("*")
                if p.is_file() and ".staging" not in p.parts
            ]
            assert len(blobs) == 1, "the replaced blob must be removed"
            metadata = http.get(instance_path(second) + "/metadata").json()[0]
            assert metadata["00100010"]["Value"][0]["Alphabetic"] == "Corrected^Name"
            # A replacement filed under another series moves, and the emptied series goes.
            ds.SeriesInstanceUID = new_series = generate_uid()
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            third = buffer.getvalue()
            assert store(http, [third]).status_code == 200
            assert fetch(http, third) == third
            old_series = dataset_from_bytes(first).SeriesInstanceUID
            study = ds.StudyInstanceUID
            assert (
                http.get(
                    f"/studies/{study}/series", params={"SeriesInstanceUID": old_series}
                ).status_code
                == 204
            )
            found = http.get(f"/studies/{study}/series").json()
            assert [item["0020000E"]["Value"][0] for item in found] == [new_series]
    finally:
        server.stop()


def test_public_base_url_and_metadata_without_opening_files(tmp_path: Path) -> None:
    server = started(tmp_path, DICOMWEB_PUBLIC_BASE_URL="https://pacs.example.org/dicom-web/")
    try:
        with httpx.Client(base_url=server.root) as http:
            study, series = generate_uid(), generate_uid()
            parts = [
                make_ct(study_uid=study, series_uid=series, instance_number=n) for n in range(50)
            ]
            response = store(http, parts)
            assert response.status_code == 200
            assert response.json()["00081190"]["Value"] == [
                f"https://pacs.example.org/dicom-web/studies/{study}"
            ]
            # Metadata comes from what ingest recorded: with every stored file gone it is
            # still served, which shows no file is opened to build it.
            for blob in list((server.data_dir / "blobs").rglob("*")):
                if blob.is_file() and ".staging" not in blob.parts:
                    blob.unlink()
            items = http.get(f"/studies/{study}/series/{series}/metadata").json()
            assert len(items) == 50
            assert items[0]["7FE00010"]["BulkDataURI"].startswith(
                f"https://pacs.example.org/dicom-web/studies/{study}/series/{series}/instances/"
            )
            found = http.get("/instances", params={"StudyInstanceUID": study, "limit": 100})
            assert len(found.json()) == 50
    finally:
        server.stop()


@pytest.fixture
def postgres_server(tmp_path: Path) -> Iterator[ServerProcess]:
    if not POSTGRES_URL:
        pytest.skip("DICOMWEB_TEST_DATABASE_URL is not set")
    url, schema = _postgres_schema_url(POSTGRES_URL)
    server = started(tmp_path, DICOMWEB_DATABASE_URL=url)
    try:
        yield server
    finally:
        server.stop()
        _drop_postgres_schema(POSTGRES_URL, schema)


def test_postgres_backed_server_round_trip_and_concurrent_duplicates(
    postgres_server: ServerProcess,
) -> None:
    server = postgres_server
    with httpx.Client(base_url=server.root, timeout=60) as http:
        files = [bundled_bytes(name) for name in ("CT_small.dcm", "JPEG2000.dcm", "rtdose.dcm")]
        assert store(http, files).status_code == 200
        for data in files:
            assert fetch(http, data) == data
        ds = dataset_from_bytes(files[0])
        found = http.get("/studies", params={"PatientName": str(ds.PatientName).lower()})
        assert [item["0020000D"]["Value"][0] for item in found.json()] == [ds.StudyInstanceUID]

        data = make_ct(rows=256, columns=256)

        statuses = store_concurrently(server.root, multipart([data]), stow_content_type(), 20)
        assert statuses == [200] * 20
        assert fetch(http, data) == data
        stored = [
            p
            for p in (server.data_dir / "blobs").rglob("*")
            if p.is_file() and ".staging" not in p.parts
        ]
        assert len(stored) == len(files) + 1
        for data in files:
            ds = dataset_from_bytes(data)
            assert http.delete(f"/studies/{ds.StudyInstanceUID}").status_code == 204
        assert http.get("/studies", params={"PatientName": "*"}).status_code == 200


def test_request_size_limit_applies_to_chunked_bodies(tmp_path: Path) -> None:
    server = started(tmp_path, DICOMWEB_MAX_REQUEST_BYTES="200000")
    try:
        with httpx.Client(base_url=server.root) as http:
            small = make_ct()
            assert store(http, [small]).status_code == 200
            body = multipart([make_ct(rows=512, columns=512)])

            def chunks() -> Iterator[bytes]:
                for start in range(0, len(body), 65536):
                    yield body[start : start + 65536]

            response = http.post(
                "/studies", content=chunks(), headers={"Content-Type": stow_content_type()}
            )
            assert response.status_code == 413
            response = http.post(
                "/studies", content=body, headers={"Content-Type": stow_content_type()}
            )
            assert response.status_code == 413
            assert staged_files(server.data_dir) == []
            assert fetch(http, small) == small
    finally:
        server.stop()
