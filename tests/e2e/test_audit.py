"""The audit trail end to end: a real archive process, real HTTP requests, and the records it
wrote - which must be on disk by the time each response has arrived.

Every route produces exactly the messages it should (one per patient where PS3.15 says so),
each valid against the DICOM Audit Message Schema; the trail can be read over HTTP and with
``dicomweb-server audit``, and both readings are audited themselves.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from lxml import etree
from pydicom.uid import generate_uid

from dicomweb_server.audit.store import read_records
from tests.audit_schema import validate
from tests.dicom_files import make_ct, multipart, stow_content_type
from tests.e2e.server import ServerProcess

ANY_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CT = "1.2.840.10008.5.1.4.1.1.2"


class Trail:
    """The records a server wrote, read straight from its audit folder."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / "audit"
        self.seen = 0

    def all(self) -> list[dict[str, Any]]:
        return read_records(self.directory)

    def new(self) -> list[dict[str, Any]]:
        """Records written since the last call, each validated against the schema."""
        found = self.all()
        fresh, self.seen = found[self.seen :], len(found)
        for record in fresh:
            validate(record["xml"])
        return fresh


def summary(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (r["event"], r["action"], r["outcome"], tuple(r["patients"]), tuple(r["studies"]))
        for r in records
    ]


def xml(record: dict[str, Any]) -> etree._Element:
    return etree.fromstring(record["xml"].encode())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("audit") / "data"
    process = ServerProcess(data_dir, env={"DICOMWEB_AUTH": "off"})
    process.start()
    yield process
    process.stop()


@pytest.fixture
def trail(server: ServerProcess) -> Trail:
    found = Trail(server.data_dir)
    found.new()  # only what this test causes
    return found


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root, timeout=60) as client:
        yield client


def stow(http: httpx.Client, parts: list[bytes], path: str = "/studies") -> httpx.Response:
    return http.post(path, content=multipart(parts), headers={"Content-Type": stow_content_type()})


@pytest.fixture(scope="module")
def stored(server: ServerProcess) -> dict[str, str]:
    """Two patients: A with a study of two CT images, B with one."""
    uids = {"a": generate_uid(), "a_series": generate_uid(), "b": generate_uid()}
    uids["a1"], uids["a2"], uids["b1"] = generate_uid(), generate_uid(), generate_uid()
    parts = [
        make_ct(study_uid=uids["a"], series_uid=uids["a_series"], sop_uid=uids["a1"],
                patient_id="PAT-A", patient_name="Alpha^Ann", frames=2),
        make_ct(study_uid=uids["a"], series_uid=uids["a_series"], sop_uid=uids["a2"],
                patient_id="PAT-A", patient_name="Alpha^Ann", instance_number=2),
        make_ct(study_uid=uids["b"], sop_uid=uids["b1"], patient_id="PAT-B",
                patient_name="Beta^Bob"),
    ]  # fmt: skip
    with httpx.Client(base_url=server.root, timeout=60) as client:
        assert stow(client, parts).status_code == 200
    return uids


def test_startup_is_recorded(server: ServerProcess) -> None:
    first = Trail(server.data_dir).all()[0]
    assert (first["event"], first["action"], first["outcome"]) == ("110100", "E", 0)
    root = validate(first["xml"])
    assert root.find(".//EventTypeCode").get("csd-code") == "110120"  # type: ignore[union-attr]
    roles = [r.get("csd-code") for r in root.findall(".//RoleIDCode")]
    assert roles == ["110150", "110151"]


def test_stow_is_one_transfer_per_patient(http: httpx.Client, trail: Trail) -> None:
    a, b = generate_uid(), generate_uid()
    parts = [
        make_ct(study_uid=a, patient_id="STOW-A", patient_name="Stow^A"),
        make_ct(study_uid=b, patient_id="STOW-B", patient_name="Stow^B"),
        make_ct(study_uid=a, patient_id="STOW-A", patient_name="Stow^A", instance_number=2),
    ]
    assert stow(http, parts).status_code == 200
    records = trail.new()  # on disk before the response arrived
    assert summary(records) == [
        ("110104", "C", 0, ("STOW-A",), (a,)),
        ("110104", "C", 0, ("STOW-B",), (b,)),
    ]
    first = records[0]
    assert (first["method"], first["path"], first["status"]) == ("POST", "/dicom-web/studies", 200)
    assert (first["user"], first["client"]) == ("anonymous", "127.0.0.1")
    root = xml(first)
    source, destination = root.findall("ActiveParticipant")
    assert source.find("RoleIDCode").get("csd-code") == "110153"  # type: ignore[union-attr]
    assert source.get("UserIsRequestor") == "true"
    assert source.get("NetworkAccessPointID") == "127.0.0.1"
    assert destination.find("RoleIDCode").get("csd-code") == "110152"  # type: ignore[union-attr]
    assert destination.get("UserID", "").endswith("/dicom-web")
    [sop_class] = root.findall(".//SOPClass")
    assert (sop_class.get("UID"), sop_class.get("NumberOfInstances")) == (CT, "2")
    assert (
        root.findall(".//ParticipantObjectIdentification")[-1].findtext("ParticipantObjectName")
        == "stow^a"
    )

    # The same instances again: the archive already holds them (A.5.3.7: "R").
    assert stow(http, parts).status_code == 200
    assert summary(trail.new()) == [
        ("110104", "R", 0, ("STOW-A",), (a,)),
        ("110104", "R", 0, ("STOW-B",), (b,)),
    ]


def test_stow_failures_are_separate_messages(http: httpx.Client, trail: Trail) -> None:
    study = generate_uid()
    good = make_ct(study_uid=study, patient_id="MIX")
    other_study = make_ct(study_uid=generate_uid(), patient_id="MIX")  # wrong study for the URL
    response = stow(http, [good, other_study, b"not dicom at all"], f"/studies/{study}")
    assert response.status_code == 202
    records = trail.new()
    assert [(r["event"], r["action"], r["outcome"]) for r in records] == [
        ("110104", "C", 0),
        ("110104", "C", 4),
    ]
    assert records[0]["patients"] == ["MIX"]
    failed = xml(records[1])
    assert failed.findtext(".//EventOutcomeDescription")

    # Refused before any part: still one failed transfer.
    refused = http.post("/studies", content=b"x", headers={"Content-Type": "text/plain"})
    assert refused.status_code == 415
    assert summary(trail.new()) == [("110104", "C", 4, (), ())]


def test_qido_records_the_exact_query(
    http: httpx.Client, trail: Trail, stored: dict[str, str]
) -> None:
    trail.new()
    query = "PatientID=PAT-A&StudyDate=20240101-20241231&includefield=00081030&fuzzymatching=false"
    assert http.get(f"/studies?{query}").status_code == 200
    [record] = trail.new()
    assert (record["event"], record["action"], record["outcome"]) == ("110112", "E", 0)
    assert record["query"] == f"/dicom-web/studies?{query}"
    [item] = xml(record).findall(".//ParticipantObjectIdentification")
    assert base64.b64decode(item.findtext("ParticipantObjectQuery") or "").decode() == query
    assert item.get("ParticipantObjectID", "").endswith("/dicom-web/studies")

    assert http.get(f"/studies/{stored['a']}/series", params={"Modality": "CT"}).status_code == 200
    [series_query] = trail.new()
    assert series_query["event"] == "110112"
    assert series_query["query"] == f"/dicom-web/studies/{stored['a']}/series?Modality=CT"


def test_retrieval_is_instances_transferred(
    http: httpx.Client, trail: Trail, stored: dict[str, str]
) -> None:
    trail.new()
    a, series, a1 = stored["a"], stored["a_series"], stored["a1"]
    for path, count in (
        (f"/studies/{a}", 2),
        (f"/studies/{a}/series/{series}", 2),
        (f"/studies/{a}/series/{series}/instances/{a1}", 1),
    ):
        response = http.get(path, headers={"Accept": ANY_DICOM})
        assert response.status_code == 200
        [record] = trail.new()
        assert summary([record]) == [("110104", "R", 0, ("PAT-A",), (a,))]
        root = xml(record)
        source, destination = root.findall("ActiveParticipant")
        assert source.get("UserIsRequestor") == "false"  # the archive sends
        assert destination.get("UserIsRequestor") == "true"  # to the requesting user
        [sop_class] = root.findall(".//SOPClass")
        assert sop_class.get("NumberOfInstances") == str(count)


def test_reads_are_instances_accessed(
    http: httpx.Client, trail: Trail, stored: dict[str, str]
) -> None:
    trail.new()
    a, series, a1, a2 = stored["a"], stored["a_series"], stored["a1"], stored["a2"]
    instance = f"/studies/{a}/series/{series}/instances/{a1}"
    octets = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    requests = [
        (f"/studies/{a}/metadata", "application/dicom+json", {a1, a2}),
        (f"{instance}/metadata", "application/dicom+json", {a1}),
        (f"{instance}/frames/1,2", octets, {a1}),
        (f"{instance}/frames/2", octets, {a1}),  # a single frame: answered by the fast lane
        (f"{instance}/bulk/7FE00010", octets, {a1}),
        (f"{instance}/rendered", "image/png", {a1}),
        (f"/studies/{a}/rendered", 'multipart/related; type="image/jpeg"', {a1, a2}),
        (f"/studies/{a}/series/{series}/thumbnail", "image/jpeg", None),
    ]
    for path, accept, instances in requests:
        response = http.get(path, headers={"Accept": accept})
        assert response.status_code == 200, (path, response.text)
        [record] = trail.new()
        assert summary([record]) == [("110103", "R", 0, ("PAT-A",), (a,))], path
        listed = {i.get("UID") for i in xml(record).findall(".//SOPClass/Instance")}
        if instances is not None:
            assert listed == instances, path
        else:
            assert len(listed) == 1  # a thumbnail shows one image


def test_failed_requests_are_recorded_as_failures(http: httpx.Client, trail: Trail) -> None:
    trail.new()
    unknown = generate_uid()
    response = http.get(
        f"/studies/{unknown}/metadata", headers={"Accept": "application/dicom+json"}
    )
    assert response.status_code == 404
    [record] = trail.new()
    assert summary([record]) == [("110103", "R", 4, (), (unknown,))]
    assert record["status"] == 404
    description = xml(record).findtext(".//EventOutcomeDescription") or ""
    assert description.startswith("HTTP 404: ")

    assert http.get("/studies/not-a-uid", headers={"Accept": ANY_DICOM}).status_code == 400
    assert summary(trail.new()) == [("110104", "R", 4, (), ())]


def test_probes_and_capabilities_are_not_audited(
    server: ServerProcess, http: httpx.Client, trail: Trail
) -> None:
    trail.new()
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    http.options("/")
    assert trail.new() == []


def test_delete(http: httpx.Client, trail: Trail) -> None:
    study, series = generate_uid(), generate_uid()
    sops = [generate_uid(), generate_uid()]
    parts = [
        make_ct(study_uid=study, series_uid=series, sop_uid=sop, patient_id="DEL") for sop in sops
    ]
    assert stow(http, parts).status_code == 200
    trail.new()
    assert http.delete(f"/studies/{study}/series/{series}/instances/{sops[0]}").status_code == 204
    [one] = trail.new()
    assert summary([one]) == [("110103", "D", 0, ("DEL",), (study,))]
    assert http.delete(f"/studies/{study}").status_code == 204
    [whole] = trail.new()
    assert summary([whole]) == [("110105", "D", 0, ("DEL",), (study,))]
    assert {i.get("UID") for i in xml(whole).findall(".//Instance")} == {sops[1]}
    assert http.delete(f"/studies/{study}").status_code == 404
    assert summary(trail.new()) == [("110105", "D", 4, (), (study,))]


def test_reading_the_trail_over_http_is_audited(
    server: ServerProcess, trail: Trail, stored: dict[str, str]
) -> None:
    trail.new()
    response = httpx.get(f"{server.url}/admin/audit", params={"patient": "PAT-A"})
    assert response.status_code == 200
    listed = [json.loads(line) for line in response.text.splitlines()]
    assert listed and all("PAT-A" in record["patients"] for record in listed)
    [used] = trail.new()
    assert (used["event"], used["action"]) == ("110101", "R")
    detail = xml(used).find(".//ParticipantObjectDetail")
    assert detail is not None
    assert base64.b64decode(detail.get("value") or "") == b"patient=PAT-A"

    bad = httpx.get(f"{server.url}/admin/audit", params={"since": "last tuesday"})
    assert bad.status_code == 400
    assert summary(trail.new()) == [("110101", "R", 4, (), ())]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomweb_server.cli", "audit", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_line_lists_filters_and_is_audited(
    server: ServerProcess, trail: Trail, stored: dict[str, str]
) -> None:
    trail.new()
    data = str(server.data_dir)
    result = run_cli("--data-dir", data, "--study", stored["b"])
    assert result.returncode == 0, result.stderr
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert records and all(stored["b"] in record["studies"] for record in records)
    assert {record["patients"][0] for record in records} == {"PAT-B"}
    [used] = trail.new()
    assert (used["event"], used["action"]) == ("110101", "R")
    assert used["query"] == f"study={stored['b']}"
    person, process = xml(used).findall("ActiveParticipant")
    assert person.get("UserIsRequestor") == "true" and "@" in person.get("UserID", "")
    assert process.get("UserName", "").startswith("dicomweb-server audit")

    # Filters combine; the reading just recorded is listed when it matches.
    since = used["time"]
    mine = run_cli("--data-dir", data, "--event", "110101", "--since", since)
    assert next(orjson.loads(line)["id"] for line in mine.stdout.splitlines()) == used["id"]
    trail.new()
    anonymous = run_cli("--data-dir", data, "--user", "anonymous", "--patient", "PAT-A",
                        "--until", "2999-01-01")  # fmt: skip
    rows = [orjson.loads(line) for line in anonymous.stdout.splitlines()]
    assert rows and all(r["user"] == "anonymous" and "PAT-A" in r["patients"] for r in rows)
    assert run_cli("--data-dir", data, "--since", "yesterday-ish").returncode == 2


def test_every_record_is_schema_valid(server: ServerProcess) -> None:
    records = Trail(server.data_dir).all()
    assert len(records) > 10
    for record in records:
        validate(record["xml"])


def test_shutdown_is_recorded(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path / "data", env={"DICOMWEB_AUTH": "off"})
    process.start()
    process.stop()
    records = Trail(tmp_path / "data").new()
    assert [(r["event"], r["action"]) for r in records] == [("110100", "E"), ("110100", "E")]
    start, stop = (xml(r).find(".//EventTypeCode").get("csd-code") for r in records)  # type: ignore[union-attr]
    assert (start, stop) == ("110120", "110121")


def test_quoted_query_strings_are_kept_as_sent(http: httpx.Client, trail: Trail) -> None:
    trail.new()
    name = quote("Ålpha^*", safe="")
    assert http.get(f"/studies?PatientName={name}&limit=5").status_code in (200, 204)
    [record] = trail.new()
    assert record["query"] == f"/dicom-web/studies?PatientName={name}&limit=5"


def test_a_server_forwards_its_trail_to_a_tls_syslog_collector(tmp_path: Path) -> None:
    import trustme

    from tests.unit.audit.syslog_collector import Collector

    ca = trustme.CA()
    ca_file, client_file = tmp_path / "ca.pem", tmp_path / "archive.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca.issue_cert("archive.example.org").private_key_and_cert_chain_pem.write_to_path(
        str(client_file)
    )
    collector = Collector(ca)
    env = {
        "DICOMWEB_AUTH": "off",
        "DICOMWEB_AUDIT_SYSLOG_URL": f"tls://127.0.0.1:{collector.port}",
        "DICOMWEB_AUDIT_SYSLOG_CA_FILE": str(ca_file),
        "DICOMWEB_AUDIT_SYSLOG_CERT_FILE": str(client_file),
        "DICOMWEB_AUDIT_SOURCE_ID": "archive-under-test",
    }
    data_dir = tmp_path / "data"
    process = ServerProcess(data_dir, env=env)
    try:
        process.start()
        assert httpx.get(f"{process.root}/studies?PatientID=SYSLOG").status_code == 204
        process.stop()
        # Started again: whatever the first run had not sent yet goes first, in order.
        process.start()
        received = collector.wait_for(4)
    finally:
        process.stop()
        collector.close()

    def event(message: bytes) -> str:
        body = message.split(b"\xef\xbb\xbf", 1)[1].decode()
        root = validate(body)
        assert root.find("AuditSourceIdentification").get("AuditSourceID") == (  # type: ignore[union-attr]
            "archive-under-test"
        )
        types = [code.get("csd-code") for code in root.findall(".//EventTypeCode")]
        return "/".join([root.find(".//EventID").get("csd-code"), *types])  # type: ignore[union-attr,list-item]

    stored = [r["xml"] for r in Trail(data_dir).all()]
    assert [event(m) for m in received[:4]] == [
        "110100/110120",
        "110112",
        "110100/110121",
        "110100/110120",
    ]
    assert [m.split(b"\xef\xbb\xbf", 1)[1].decode() for m in received[:4]] == stored[:4]
    assert collector.peers[0] == "archive.example.org"
