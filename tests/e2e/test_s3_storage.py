"""The archive on S3 end to end: a real server storing into a real SeaweedFS bucket.

Everything a client can do (store, retrieve whole instances, frames, bulk data and byte
ranges, metadata, delete) must behave as on the filesystem store, the bucket must hold
exactly the objects of the stored instances, and an outage of the object store must turn
into clean 503 answers, never an acknowledgement, and heal once the store is back.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.encaps import get_frame

from tests.conftest import S3_TEST_BUCKET, start_seaweedfs
from tests.dicom_files import (
    bundled_bytes,
    dataset_from_bytes,
    instance_path,
    make_ct,
    multipart,
    split_multipart,
    stow_content_type,
    with_new_uids,
)
from tests.e2e.server import ServerProcess
from tests.seaweedfs import SeaweedFS

MiB = 1024**2
SINGLE_DICOM = "application/dicom; transfer-syntax=*"
STORED_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def s3_env(seaweedfs: SeaweedFS, prefix: str, **extra: str) -> dict[str, str]:
    """Server environment selecting the S3 store on ``seaweedfs`` under ``prefix``."""
    return {
        "DICOMWEB_STORAGE_BACKEND": "s3",
        "DICOMWEB_S3_BUCKET": S3_TEST_BUCKET,
        "DICOMWEB_S3_ENDPOINT_URL": seaweedfs.endpoint_url,
        "DICOMWEB_S3_REGION": seaweedfs.region,
        "DICOMWEB_S3_ACCESS_KEY_ID": seaweedfs.access_key,
        "DICOMWEB_S3_SECRET_ACCESS_KEY": seaweedfs.secret_key,
        "DICOMWEB_S3_PREFIX": prefix,
        # Low, so that a 12 MiB instance goes up in three parts.
        "DICOMWEB_S3_MULTIPART_THRESHOLD_BYTES": str(5 * MiB),
        "DICOMWEB_S3_MULTIPART_CHUNK_BYTES": str(5 * MiB),
        **extra,
    }


@dataclass
class S3Archive:
    server: ServerProcess
    seaweedfs: SeaweedFS
    prefix: str

    def object_keys(self) -> set[str]:
        """Blob keys of the objects under this archive's prefix."""
        keys = self.seaweedfs.object_keys(S3_TEST_BUCKET, self.prefix + "/")
        return {key.removeprefix(self.prefix + "/") for key in keys}

    def index_keys(self) -> set[str]:
        with sqlite3.connect(self.server.data_dir / "index.sqlite") as db:
            return {row[0] for row in db.execute("SELECT blob_key FROM instances")}

    def intents(self) -> int:
        with sqlite3.connect(self.server.data_dir / "index.sqlite") as db:
            return int(db.execute("SELECT count(*) FROM blob_intents").fetchone()[0])

    def assert_no_orphans(self) -> None:
        """The bucket holds exactly the stored instances' objects, nothing in flight."""
        assert self.object_keys() == self.index_keys()
        assert self.intents() == 0


@pytest.fixture(scope="module")
def s3_archive(
    seaweedfs: SeaweedFS, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Archive]:
    prefix = f"e2e-{secrets.token_hex(4)}"
    server = ServerProcess(
        tmp_path_factory.mktemp("s3-archive") / "data", env=s3_env(seaweedfs, prefix)
    )
    server.start()
    yield S3Archive(server, seaweedfs, prefix)
    server.stop()


@pytest.fixture(scope="module")
def server(s3_archive: S3Archive) -> ServerProcess:
    """The e2e ``http`` fixture's server: here the S3-backed one."""
    return s3_archive.server


def store(http: httpx.Client, parts: list[bytes]) -> httpx.Response:
    return http.post(
        "/studies", content=multipart(parts), headers={"Content-Type": stow_content_type()}
    )


def fetch(http: httpx.Client, data: bytes) -> bytes:
    response = http.get(instance_path(data), headers={"Accept": SINGLE_DICOM})
    assert response.status_code == 200, response.text
    return response.content


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def corpus(s3_archive: S3Archive) -> dict[str, bytes]:
    """Instances of every kind the read paths treat differently, stored once."""
    files = {
        "ct": with_new_uids(bundled_bytes("CT_small.dcm")),
        "bigendian": with_new_uids(bundled_bytes("MR_small_bigendian.dcm")),
        "ybr_jpeg_30_frames": with_new_uids(bundled_bytes("examples_ybr_color.dcm")),
        "rle_2_frames": with_new_uids(bundled_bytes("SC_rgb_rle_2frame.dcm")),
        "rtdose": with_new_uids(bundled_bytes("rtdose.dcm")),
        "deflated": with_new_uids(bundled_bytes("image_dfl.dcm")),
        # 12 MiB of native frames: a multipart upload, and frames across part boundaries.
        "large": make_ct(rows=512, columns=512, frames=24, pixel_data=os.urandom(512 * 512 * 48)),
    }
    with httpx.Client(base_url=s3_archive.server.root, timeout=120) as http:
        response = store(http, list(files.values()))
    assert response.status_code == 200, response.text
    stored = response.json()["00081199"]["Value"]
    assert len(stored) == len(files)
    return files


# --- store and retrieve ---------------------------------------------------------------------


def test_instances_are_objects_and_come_back_byte_exact(
    http: httpx.Client, s3_archive: S3Archive, corpus: dict[str, bytes]
) -> None:
    for name, data in corpus.items():
        assert fetch(http, data) == data, name
    object_shas = {key.split("/")[-1].rsplit("-", 1)[0] for key in s3_archive.object_keys()}
    assert {sha256(data) for data in corpus.values()} <= object_shas
    large = next(
        key for key in s3_archive.object_keys() if sha256(corpus["large"]) in key.split("/")[-1]
    )
    head = s3_archive.seaweedfs.client().head_object(
        Bucket=S3_TEST_BUCKET, Key=f"{s3_archive.prefix}/{large}"
    )
    assert head["ETag"].endswith('-3"')  # 12 MiB + header in 5 MiB parts
    assert head["ContentLength"] == len(corpus["large"])


def test_staging_is_local_and_left_empty(s3_archive: S3Archive, corpus: dict[str, bytes]) -> None:
    staging = s3_archive.server.data_dir / "staging"
    assert staging.is_dir()
    assert list(staging.rglob("*.part")) == []
    assert not (s3_archive.server.data_dir / "blobs").exists()


def test_frames_come_from_ranged_reads(http: httpx.Client, corpus: dict[str, bytes]) -> None:
    # Encapsulated (JPEG): frame 7 of 30 is one fragment range of the object.
    data = corpus["ybr_jpeg_30_frames"]
    ds = dataset_from_bytes(data)
    response = http.get(f"{instance_path(data)}/frames/7,30", headers={"Accept": STORED_FRAMES})
    assert response.status_code == 200, response.text
    parts = list(split_multipart(response.content, response.headers["content-type"]))
    assert [body for _, body in parts] == [
        get_frame(ds.PixelData, 6, number_of_frames=30),
        get_frame(ds.PixelData, 29, number_of_frames=30),
    ]
    # Native, in the multipart-uploaded object: frame 11 spans the 5 MiB part boundary.
    data = corpus["large"]
    pixels = dataset_from_bytes(data).PixelData
    frame = 512 * 512 * 2
    response = http.get(
        f"{instance_path(data)}/frames/11", headers={"Accept": "application/octet-stream"}
    )
    assert response.status_code == 200, response.text
    assert response.content == pixels[10 * frame : 11 * frame]
    # Deflated: no byte ranges, the whole object is read and parsed.
    data = corpus["deflated"]
    response = http.get(f"{instance_path(data)}/frames/1", headers={"Accept": STORED_FRAMES})
    assert response.status_code == 200, response.text
    [(_, body)] = list(split_multipart(response.content, response.headers["content-type"]))
    assert body == dataset_from_bytes(data).PixelData


def test_bulk_data_values(http: httpx.Client, corpus: dict[str, bytes]) -> None:
    for name in ("ct", "rtdose", "deflated"):
        data = corpus[name]
        metadata = http.get(
            f"{instance_path(data)}/metadata", headers={"Accept": "application/dicom+json"}
        )
        assert metadata.status_code == 200, metadata.text
        uri = metadata.json()[0]["7FE00010"]["BulkDataURI"]
        response = http.get(uri, headers={"Accept": "application/octet-stream"})
        assert response.status_code == 200, (name, response.text)
        assert response.content == dataset_from_bytes(data).PixelData, name


def test_byte_range_requests(http: httpx.Client, corpus: dict[str, bytes]) -> None:
    data = corpus["ct"]
    response = http.get(
        instance_path(data), headers={"Accept": SINGLE_DICOM, "Range": "bytes=128-131"}
    )
    assert response.status_code == 206
    assert response.content == b"DICM"
    response = http.get(instance_path(data), headers={"Accept": SINGLE_DICOM, "Range": "bytes=-7"})
    assert response.status_code == 206
    assert response.content == data[-7:]
    large = corpus["large"]
    start = 5 * MiB - 100
    response = http.get(
        instance_path(large),
        headers={"Accept": SINGLE_DICOM, "Range": f"bytes={start}-{start + 199}"},
    )
    assert response.status_code == 206
    assert response.content == large[start : start + 200]
    response = http.get(
        instance_path(data), headers={"Accept": SINGLE_DICOM, "Range": f"bytes={len(data)}-"}
    )
    assert response.status_code == 416


def test_transcoding_reads_the_whole_object(http: httpx.Client, corpus: dict[str, bytes]) -> None:
    data = corpus["bigendian"]
    response = http.get(
        instance_path(data), headers={"Accept": f"application/dicom; transfer-syntax={EXPLICIT_LE}"}
    )
    assert response.status_code == 200, response.text
    delivered = pydicom.dcmread(io.BytesIO(response.content))
    assert delivered.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(delivered.pixel_array, dataset_from_bytes(data).pixel_array)


def test_series_metadata(http: httpx.Client, s3_archive: S3Archive) -> None:
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    parts = [
        make_ct(study_uid=study, series_uid=series, instance_number=n, rows=16, columns=16)
        for n in (1, 2, 3)
    ]
    assert store(http, parts).status_code == 200
    response = http.get(
        f"/studies/{study}/series/{series}/metadata", headers={"Accept": "application/dicom+json"}
    )
    assert response.status_code == 200
    uids = {item["00080018"]["Value"][0] for item in response.json()}
    assert uids == {dataset_from_bytes(part).SOPInstanceUID for part in parts}


# --- the bucket holds exactly what the index says ----------------------------------------


def test_delete_study_removes_its_objects(http: httpx.Client, s3_archive: S3Archive) -> None:
    study = pydicom.uid.generate_uid()
    parts = [make_ct(study_uid=study, instance_number=n, rows=32, columns=32) for n in (1, 2, 3)]
    before = s3_archive.object_keys()
    assert store(http, parts).status_code == 200
    added = s3_archive.object_keys() - before
    assert len(added) == 3
    assert {key.split("/")[-1].rsplit("-", 1)[0] for key in added} == {sha256(p) for p in parts}
    response = http.delete(f"/studies/{study}")
    assert response.status_code in (200, 202, 204), response.text
    assert s3_archive.object_keys() & added == set()
    assert http.get(instance_path(parts[0]), headers={"Accept": SINGLE_DICOM}).status_code == 404
    s3_archive.assert_no_orphans()


def test_no_orphans_after_duplicates_refusals_and_deletes(
    http: httpx.Client, s3_archive: S3Archive
) -> None:
    first = make_ct(rows=32, columns=32)
    second = make_ct(rows=32, columns=32)
    assert store(http, [first, second]).status_code == 200
    # The same bytes again: already present, no second object.
    assert store(http, [first]).status_code == 200
    assert store(http, [first, first]).status_code == 200
    # Other bytes under a stored SOP Instance UID: refused, and its upload removed.
    ds = dataset_from_bytes(first)
    ds.PatientName = "Other^Bytes"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    response = store(http, [buffer.getvalue()])
    assert response.status_code == 409, response.text
    # Concurrent duplicates of one new instance: one object survives.
    third = make_ct(rows=32, columns=32)
    from tests.e2e.server import store_concurrently

    codes = store_concurrently(
        s3_archive.server.root, multipart([third]), stow_content_type(), clients=6
    )
    assert set(codes) == {200}, codes
    s3_archive.assert_no_orphans()
    assert http.delete(instance_path(second)).status_code in (200, 202, 204)
    s3_archive.assert_no_orphans()
    shas = [key.split("/")[-1].rsplit("-", 1)[0] for key in s3_archive.object_keys()]
    assert shas.count(sha256(first)) == 1
    assert shas.count(sha256(third)) == 1
    assert sha256(second) not in shas


def test_missing_bucket_fails_start_up_naming_it(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    bucket = f"absent-{secrets.token_hex(4)}"
    env = s3_env(seaweedfs, "x", DICOMWEB_S3_BUCKET=bucket)
    server = ServerProcess(tmp_path / "data", env=env)
    with pytest.raises(RuntimeError, match="exited early") as info:
        server.start()
    message = str(info.value)
    assert bucket in message and seaweedfs.endpoint_url in message
    assert "does not exist" in message
    assert bucket not in {b["Name"] for b in seaweedfs.client().list_buckets()["Buckets"]}


# --- an outage of the object store ------------------------------------------------------


def wait_ready(server: ServerProcess, ready: bool, timeout: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{server.url}/readyz", timeout=10)
        if (response.status_code == 200) == ready or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_object_store_outage_is_a_clean_503_and_heals(tmp_path: Path) -> None:
    """Its own SeaweedFS, killed and restarted: nothing else shares it."""
    weed = start_seaweedfs(tmp_path / "weed")
    prefix = "outage"
    env = s3_env(
        weed,
        prefix,
        DICOMWEB_S3_MAX_ATTEMPTS="2",
        DICOMWEB_S3_CONNECT_TIMEOUT_SECONDS="1",
        DICOMWEB_S3_READ_TIMEOUT_SECONDS="10",
    )
    server = ServerProcess(tmp_path / "data", env=env)
    archive = S3Archive(server, weed, prefix)
    try:
        server.start()
        with httpx.Client(base_url=server.root, timeout=60) as http:
            before = make_ct(rows=64, columns=64, frames=2)
            assert store(http, [before]).status_code == 200

            weed.kill()
            ready = wait_ready(server, ready=False)
            assert ready.status_code == 503
            assert "object store" in ready.json()["reason"]

            during = [make_ct(rows=64, columns=64), make_ct(rows=64, columns=64)]
            response = store(http, during)
            assert response.status_code == 503, response.text
            assert "retry later" in response.text
            assert response.headers["retry-after"] == "5"
            assert "Traceback" not in response.text
            assert response.headers["warning"].startswith("299 ")
            # Nothing was acknowledged, so nothing may be found.
            for part in during:
                uid = dataset_from_bytes(part).StudyInstanceUID
                found = http.get("/studies", params={"StudyInstanceUID": uid})
                assert found.status_code in (200, 204) and not (
                    found.status_code == 200 and found.json()
                ), found.text
            frame = http.get(
                f"{instance_path(before)}/frames/1", headers={"Accept": "application/octet-stream"}
            )
            assert frame.status_code == 503, frame.status_code

            weed.start()
            assert wait_ready(server, ready=True).status_code == 200
            assert store(http, during).status_code == 200
            assert fetch(http, before) == before
            for part in during:
                assert fetch(http, part) == part
        assert "Traceback" not in server.log()
        # A restart's recovery leaves the bucket holding exactly the stored instances.
        server.stop()
        server.start()
        archive.assert_no_orphans()
        assert len(archive.index_keys()) == 3
    finally:
        server.stop()
        weed.close()
