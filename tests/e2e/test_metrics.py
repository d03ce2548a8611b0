"""Prometheus metrics of a real archive process over HTTP: exact counts per transaction,
no request data in labels, who may scrape, and totals across ``serve --workers 2``."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from pydicom.uid import generate_uid

from dicomweb_server.audit.store import read_records
from dicomweb_server.metrics.registry import STORE_RESULTS
from dicomweb_server.metrics.transactions import TRANSACTIONS
from tests.dicom_files import make_ct, multipart, stow_content_type
from tests.e2e.idp import TestIdP
from tests.e2e.server import ServerProcess
from tests.prometheus_text import Scrape

UID = re.compile(r"\d+(?:\.\d+){3,}")
DICOM_ANY = "application/dicom; transfer-syntax=*"
SERIES_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def scrape(server: ServerProcess, **headers: str) -> Scrape:
    # A connection of its own, so that with several workers any of them may answer.
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return Scrape.parse(response.text)


def stow(client: httpx.Client, parts: list[bytes]) -> httpx.Response:
    return client.post(
        "/studies", content=multipart(parts), headers={"Content-Type": stow_content_type()}
    )


# -- counting (authentication off, one process) -------------------------------------------


def test_counters_move_by_exactly_the_requests_made(
    server: ServerProcess, http: httpx.Client
) -> None:
    study, series = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(3)]
    parts = [make_ct(study_uid=study, series_uid=series, sop_uid=sop) for sop in sops]
    before = scrape(server)

    assert stow(http, parts).status_code == 200
    again = stow(http, [parts[0], b"garbage, not a DICOM file"])
    assert again.status_code == 202
    for _ in range(5):
        assert http.get("/studies", params={"StudyInstanceUID": study}).status_code == 200
    instance = f"/studies/{study}/series/{series}/instances/{sops[1]}"
    for _ in range(2):
        assert http.get(instance, headers={"Accept": DICOM_ANY}).status_code == 200
    whole_series = http.get(f"/studies/{study}/series/{series}", headers={"Accept": SERIES_ANY})
    assert whole_series.status_code == 200
    assert http.get(f"/studies/{generate_uid()}/metadata").status_code == 404
    assert http.get(f"{instance}/frames/1").status_code == 200

    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    def requests(transaction: str, code: int) -> float:
        return after.requests(transaction, code) - before.requests(transaction, code)

    assert requests("stow", 200) == 1
    assert requests("stow", 202) == 1
    assert requests("qido", 200) == 5
    assert requests("wado-instance", 200) == 2
    assert requests("wado-series", 200) == 1
    assert requests("metadata", 404) == 1
    assert requests("frames", 200) == 1
    assert requests("metrics", 200) == 1  # the first scrape; the second is still running
    assert moved("dicomweb_stow_received_bytes_total") == sum(map(len, parts)) + len(
        parts[0]
    ) + len(b"garbage, not a DICOM file")
    assert moved("dicomweb_stow_instances_total", result="stored") == 3
    assert moved("dicomweb_stow_instances_total", result="already_present") == 1
    assert moved("dicomweb_stow_instances_total", result="failed") == 1
    for transaction, count in [("stow", 2), ("qido", 5), ("wado-instance", 2), ("metadata", 1)]:
        observed = after.observations(transaction) - before.observations(transaction)
        assert observed == count, transaction
        inf = "dicomweb_http_request_duration_seconds_bucket"
        assert moved(inf, transaction=transaction, le="+Inf") == count
    assert after.value("dicomweb_http_requests_in_flight") == 1  # the scrape itself
    assert moved("dicomweb_blob_store_errors_total") == 0
    assert moved("dicomweb_index_errors_total") == 0


def test_labels_hold_no_request_data(server: ServerProcess, http: httpx.Client) -> None:
    patient = "PATIENT-SECRET-77"
    study = generate_uid()
    part = make_ct(study_uid=study, patient_id=patient, patient_name="Secret^Person")
    assert stow(http, [part]).status_code == 200
    http.get("/studies", params={"PatientID": patient})
    http.get(f"/studies/{study}/metadata")
    http.get(f"/studies/{study}/no-such-resource")
    httpx.get(f"{server.url}/{patient}/x")
    text = httpx.get(f"{server.url}/metrics").text
    assert patient not in text and "Secret" not in text
    assert not UID.search(text), UID.search(text)
    found = Scrape.parse(text)
    assert found.label_values("transaction") <= TRANSACTIONS
    assert found.label_values("result") <= set(STORE_RESULTS)
    assert all(re.fullmatch(r"[1-5]\d\d", code) for code in found.label_values("code"))


def test_a_blob_cut_short_on_disk_is_a_blob_store_error(
    server: ServerProcess, http: httpx.Client
) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    data = make_ct(study_uid=study, series_uid=series, sop_uid=sop, rows=128, columns=128)
    assert stow(http, [data]).status_code == 200
    [blob] = [
        path
        for path in (server.data_dir / "blobs").rglob("*")
        if path.is_file() and ".staging" not in path.parts and path.read_bytes() == data
    ]
    before = scrape(server)
    blob.write_bytes(data[: len(data) // 2])  # damage behind the archive's back
    url = f"{server.root}/studies/{study}/series/{series}/instances/{sop}"
    # The whole instance is read in one piece before the response starts: a clean 503.
    assert httpx.get(url, headers={"Accept": DICOM_ANY}, timeout=30).status_code == 503
    single = {"Accept": "application/dicom; transfer-syntax=*", "Range": "bytes=0-"}
    with pytest.raises(httpx.HTTPError):  # a range streams: Content-Length promised more
        httpx.get(url, headers=single, timeout=30)
    after = scrape(server)
    moved = after.value("dicomweb_blob_store_errors_total") - before.value(
        "dicomweb_blob_store_errors_total"
    )
    assert moved == 2
    assert after.requests("wado-instance", 503) - before.requests("wado-instance", 503) == 1
    assert after.requests("wado-instance", 206) - before.requests("wado-instance", 206) == 1


# -- who may scrape --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idp() -> Iterator[TestIdP]:
    with TestIdP() as provider:
        yield provider


def test_metrics_need_the_monitor_role_and_scrapes_are_not_audited(
    idp: TestIdP, tmp_path: Path
) -> None:
    server = ServerProcess(tmp_path / "data", idp.server_env())
    server.start()
    try:
        url = f"{server.url}/metrics"
        assert httpx.get(url).status_code == 401
        for scope in ("dicomweb.read", "dicomweb.write", "dicomweb.delete", "openid"):
            token = idp.mint(sub="viewer", scope=scope)
            refused = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 403, scope
            assert 'scope="dicomweb.monitor"' in refused.headers["www-authenticate"]
        monitor = {
            "Authorization": f"Bearer {idp.mint(sub='prometheus', scope='dicomweb.monitor')}"
        }
        admin = {"Authorization": f"Bearer {idp.mint(sub='operator', scope='dicomweb.admin')}"}
        first = scrape(server, **monitor)
        second = scrape(server, **admin)
        assert second.requests("metrics", 403) == 4
        assert second.requests("unrouted", 401) == 1  # refused before routing
        assert second.requests("metrics", 200) - first.requests("metrics", 200) == 1
        # The monitor role reads metrics and nothing else.
        studies = httpx.get(f"{server.root}/studies", headers=monitor)
        assert studies.status_code == 403
        records = [r for r in read_records(server.data_dir / "audit") if r["path"] == "/metrics"]
        # The failed login and the four Security Alerts; no record of the scrapes.
        assert sorted(r["status"] for r in records) == [401, 403, 403, 403, 403]
    finally:
        server.stop()


def test_public_metrics_need_no_token_but_everything_else_still_does(
    idp: TestIdP, tmp_path: Path
) -> None:
    env = {**idp.server_env(), "DICOMWEB_METRICS_PUBLIC": "true"}
    server = ServerProcess(tmp_path / "data", env)
    server.start()
    try:
        assert scrape(server).requests("metrics", 200) == 0
        assert scrape(server).requests("metrics", 200) == 1
        assert httpx.get(f"{server.root}/studies").status_code == 401
        assert httpx.get(f"{server.url}/admin/audit").status_code == 401
        assert httpx.post(f"{server.url}/metrics").status_code == 401
        records = [r for r in read_records(server.data_dir / "audit") if r["path"] == "/metrics"]
        assert [r["status"] for r in records] == [401]  # the POST only
    finally:
        server.stop()


def test_metrics_can_be_switched_off(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", {"DICOMWEB_METRICS": "off"})
    server.start()
    try:
        assert httpx.get(f"{server.url}/metrics").status_code == 404
    finally:
        server.stop()


# -- several workers -------------------------------------------------------------------------


def worker_pids(server: ServerProcess) -> set[int]:
    assert server.process is not None
    children = psutil.Process(server.process.pid).children(recursive=True)
    return {child.pid for child in children if "python" in child.name().lower()}


def qido_by_worker(directory: Path) -> dict[int, float]:
    """Each worker's own count of answered searches, read from its file alone."""
    from prometheus_client.multiprocess import MultiProcessCollector

    wanted = {"transaction": "qido", "code": "204"}
    counts = {}
    for path in directory.glob("counter_*.db"):
        for family in MultiProcessCollector.merge([str(path)]):
            for sample in family.samples:
                if sample.name == "dicomweb_http_requests_total" and sample.labels == wanted:
                    counts[int(path.stem.split("_")[1])] = sample.value
    return {pid: count for pid, count in counts.items() if count}


def test_totals_are_the_same_whichever_worker_answers(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    # A file an earlier run left behind: its counts must not appear in this run's totals.
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    stale = MmapedDict(str(directory / "counter_1.db"))
    labels = ("transaction", "code")
    key = mmap_key(
        "dicomweb_http_requests", "dicomweb_http_requests_total", labels, ("qido", "204"), "x"
    )
    stale.write_value(key, 1000.0, 0.0)
    stale.close()

    server = ServerProcess(
        tmp_path / "data", {"PROMETHEUS_MULTIPROC_DIR": str(directory)}, ["--workers", "2"]
    )
    server.start()
    try:
        assert not (directory / "counter_1.db").exists()
        requests = 0
        # A connection each: the kernel hands them to whichever worker accepts first, so
        # keep going until both have answered some (rarely more than a few dozen).
        while requests < 40 or len(qido_by_worker(directory)) < 2:
            assert requests < 1000, f"one worker answered everything: {qido_by_worker(directory)}"
            assert httpx.get(f"{server.root}/studies").status_code == 204
            requests += 1
        assert sum(qido_by_worker(directory).values()) == requests
        for _ in range(10):
            assert scrape(server).requests("qido", 204) == requests

        # A worker killed outright: its counts stay, a scrape drops its in-flight gauge,
        # and requests answered after it (by the survivor or its replacement) add up.
        victim = min(qido_by_worker(directory))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = worker_pids(server)
            if victim not in pids and len(pids) >= 2:
                try:
                    if httpx.get(f"{server.url}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        for _ in range(10):
            found = scrape(server)
            assert found.requests("qido", 204) == requests
            assert found.value("dicomweb_http_requests_in_flight") == 1
        assert not (directory / f"gauge_livesum_{victim}.db").exists()
        assert (directory / f"counter_{victim}.db").exists()
        assert httpx.get(f"{server.root}/studies").status_code == 204
        assert scrape(server).requests("qido", 204) == requests + 1
    finally:
        server.stop()
