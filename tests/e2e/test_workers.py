"""Four worker processes on one index and one store, under concurrent stores and deletes.

Clients send overlapping studies to whichever worker the kernel hands their connection to,
while others delete and re-store studies. Whatever the interleaving, the archive must end in
a state it can account for: exact counts, no duplicate rows, every indexed instance readable
byte for byte, no blob without a row, no row without a blob, and never a 5xx.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicomweb_server.index.database import create_index_engine
from dicomweb_server.index.models import BlobIntent, Instance, Series, Study, Worker
from tests.dicom_files import (
    bundled_bytes,
    dataset_from_bytes,
    instance_path,
    multipart,
    split_multipart,
    stow_content_type,
    with_new_uids,
)
from tests.e2e.server import ServerProcess, blob_keys, staged_files

pytestmark = pytest.mark.slow

STUDIES = 8
SERIES_PER_STUDY = 3
INSTANCES_PER_SERIES = 5
WORKERS = 4
ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _make_studies() -> dict[str, list[bytes]]:
    """Study UID -> its instances (small CT images under fresh UIDs)."""
    source = bundled_bytes("CT_small.dcm")
    studies: dict[str, list[bytes]] = {}
    for _ in range(STUDIES):
        study = generate_uid()
        studies[study] = [
            with_new_uids(source, study=study, series=series)
            for series in (generate_uid() for _ in range(SERIES_PER_STUDY))
            for _ in range(INSTANCES_PER_SERIES)
        ]
    return studies


@pytest.fixture
def cluster(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path / "data",
        env={"DICOMWEB_DATABASE_URL": database_url},
        args=["--workers", str(WORKERS)],
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Clients:
    """Concurrent HTTP clients that record every status code they see."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.statuses: list[tuple[str, int, str]] = []
        self._lock = threading.Lock()

    def _record(self, what: str, response: httpx.Response) -> httpx.Response:
        with self._lock:
            self.statuses.append((what, response.status_code, response.text[:300]))
        return response

    def store(self, parts: list[bytes]) -> httpx.Response:
        # A fresh connection per request, so requests spread over the workers.
        with httpx.Client(base_url=self.root, timeout=120) as http:
            response = http.post(
                "/studies",
                content=multipart(parts),
                headers={"Content-Type": stow_content_type()},
            )
        return self._record("store", response)

    def delete(self, study: str) -> httpx.Response:
        with httpx.Client(base_url=self.root, timeout=120) as http:
            return self._record("delete", http.delete(f"/studies/{study}"))

    def server_errors(self) -> list[tuple[str, int, str]]:
        return [entry for entry in self.statuses if entry[1] >= 500]


def _store_plan(studies: dict[str, list[bytes]], seed: int) -> list[list[bytes]]:
    """Every instance twice, in different random batches of 1 to 6 instances."""
    rng = random.Random(seed)
    everything = [data for instances in studies.values() for data in instances] * 2
    rng.shuffle(everything)
    batches: list[list[bytes]] = []
    while everything:
        size = rng.randint(1, 6)
        batches.append(everything[:size])
        del everything[:size]
    return batches


def _index_counts(database_url: str) -> dict[str, int]:
    engine = create_index_engine(database_url)
    try:
        with engine.connect() as connection:
            return {
                name: int(connection.scalar(select(func.count()).select_from(model)) or 0)
                for name, model in (
                    ("studies", Study),
                    ("series", Series),
                    ("instances", Instance),
                    ("intents", BlobIntent),
                    ("workers", Worker),
                )
            }
    finally:
        engine.dispose()


def _indexed_blob_keys(database_url: str) -> list[str]:
    engine = create_index_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.scalars(select(Instance.blob_key)))
    finally:
        engine.dispose()


def _check_consistent(server: ServerProcess, database_url: str, by_sop: dict[str, bytes]) -> int:
    """Rows and blobs agree one to one, and each indexed instance reads back byte for byte."""
    keys = _indexed_blob_keys(database_url)
    assert len(keys) == len(set(keys))
    assert sorted(keys) == blob_keys(server.data_dir), "orphan or missing blobs"
    counts = _index_counts(database_url)
    assert counts["intents"] == 0
    with httpx.Client(base_url=server.root, timeout=60) as http:
        found = http.get("/instances", params={"limit": "10000"})
        assert found.status_code in (200, 204)
        listed = found.json() if found.status_code == 200 else []
        sops = [item["00080018"]["Value"][0] for item in listed]
        assert len(sops) == len(set(sops)) == counts["instances"]
        for sop in sops:
            data = by_sop[sop]
            response = http.get(instance_path(data), headers={"Accept": ANY})
            assert response.status_code == 200, response.text
            parts = list(split_multipart(response.content, response.headers["content-type"]))
            assert [content for _, content in parts] == [data]
    assert staged_files(server.data_dir) == []
    return counts["instances"]


def test_four_workers_store_delete_and_restore_consistently(
    cluster: ServerProcess, database_url: str
) -> None:
    studies = _make_studies()
    by_sop = {
        str(dataset_from_bytes(data).SOPInstanceUID): data
        for instances in studies.values()
        for data in instances
    }
    total = STUDIES * SERIES_PER_STUDY * INSTANCES_PER_SERIES
    clients = Clients(cluster.root)

    # 1. Overlapping concurrent stores: every instance arrives twice, through any worker.
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(clients.store, _store_plan(studies, seed=1)))
    assert clients.server_errors() == []
    for response in responses:
        assert response.status_code == 200, response.text
        assert "00081198" not in response.json(), response.text  # no failed instances
    counts = _index_counts(database_url)
    assert (counts["studies"], counts["series"], counts["instances"]) == (
        STUDIES,
        STUDIES * SERIES_PER_STUDY,
        total,
    )
    assert counts["workers"] >= WORKERS
    assert _check_consistent(cluster, database_url, by_sop) == total

    # 2. Deletes racing re-stores of the same studies, and stores of the others.
    uids = list(studies)
    churned, steady = uids[: STUDIES // 2], uids[STUDIES // 2 :]
    rng = random.Random(2)
    jobs: list[tuple[str, object]] = []
    for study in churned:
        jobs += [("delete", study), ("delete", study)]
        instances = list(studies[study])
        rng.shuffle(instances)
        jobs += [("store", instances[i : i + 4]) for i in range(0, len(instances), 4)]
    for study in steady:
        jobs += [("store", studies[study][i : i + 5]) for i in range(0, len(studies[study]), 5)]
    rng.shuffle(jobs)

    def run(job: tuple[str, object]) -> int:
        kind, what = job
        if kind == "delete":
            assert isinstance(what, str)
            return clients.delete(what).status_code
        assert isinstance(what, list)
        return clients.store(what).status_code

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, jobs))
    assert clients.server_errors() == []
    assert all(code in (200, 204, 404) for code in results), results
    remaining = _check_consistent(cluster, database_url, by_sop)
    steady_count = sum(len(studies[study]) for study in steady)
    assert steady_count <= remaining <= total

    # 3. Re-storing the churned studies brings back exactly the full archive.
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(clients.store, [studies[study] for study in churned]))
    assert clients.server_errors() == []
    counts = _index_counts(database_url)
    assert (counts["studies"], counts["series"], counts["instances"]) == (
        STUDIES,
        STUDIES * SERIES_PER_STUDY,
        total,
    )
    assert _check_consistent(cluster, database_url, by_sop) == total
    with httpx.Client(base_url=cluster.root, timeout=60) as http:
        for study, instances in studies.items():
            found = http.get(f"/studies/{study}/instances")
            assert found.status_code == 200
            assert len(found.json()) == len(instances)
