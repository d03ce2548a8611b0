"""The benchmark's pure helpers (scripts/benchlib): what its verdicts and workload rest on."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from benchlib.client import Response, percentile_ms
from benchlib.large_index import cpu_per_instance, tail_rates
from benchlib.multipart import STOW_CONTENT_TYPE, parts, stow_body
from benchlib.qido import LIMIT, Query, QueryMix
from benchlib.report import Figures, Scenario
from benchlib.servers import ORTHANC_NAME, OURS
from benchlib.workload import UID_WIDTH, SmallInstance, make_studies, uid


def test_percentile_is_nearest_rank() -> None:
    latencies = [n / 1000 for n in range(1, 101)]
    assert percentile_ms(latencies, 0.5) == pytest.approx(50)
    assert percentile_ms(latencies, 0.99) == pytest.approx(99)
    assert percentile_ms([0.002], 0.99) == pytest.approx(2)


def test_tail_rates_compare_first_and_last_tenth() -> None:
    # 100 requests of 10 instances, one per second for the first half, two per second after.
    completions = [(float(n + 1), 10) for n in range(50)]
    completions += [(50 + (n + 1) / 2, 10) for n in range(50)]
    first, last = tail_rates(completions, 1000)
    assert first == pytest.approx(10.0)
    assert last == pytest.approx(20.0, rel=0.1)


def test_stow_body_splits_back_into_its_instances() -> None:
    instances = [b"first\r\n--not-a-boundary", b"second"]
    found = parts(stow_body(instances), STOW_CONTENT_TYPE)
    assert [content for _, content in found] == instances
    assert all(headers["content-type"] == "application/dicom" for headers, _ in found)


def test_uids_have_a_fixed_width() -> None:
    assert len(uid(10, 0)) == len(uid(99, 8 * 10**12)) == UID_WIDTH
    with pytest.raises(ValueError):
        uid(9, 0)


def test_template_instances_read_back_with_their_values() -> None:
    study = make_studies(5, kind=30)[3]
    data = SmallInstance().instance(study, kind=30, number=7, per_series=5)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.StudyInstanceUID == study.study_uid
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == uid(32, 3007)
    assert ds.SeriesInstanceUID == uid(31, 301)
    assert str(ds.PatientName) == study.patient_name
    assert (ds.PatientID, ds.AccessionNumber) == (study.patient_id, study.accession)
    assert (ds.Modality, ds.StudyDate, ds.PatientSex) == (
        study.modality,
        study.study_date,
        study.sex,
    )
    assert (int(ds.SeriesNumber), int(ds.InstanceNumber)) == (2, 8)


def test_query_mix_knows_every_matching_study() -> None:
    studies = make_studies(300, kind=30)
    mix = QueryMix(studies, count=60)
    for query in mix.queries:
        name, value = query.params[0]
        if name == "PatientID":
            assert query.expected == {s.study_uid for s in studies if s.patient_id == value}
        elif name == "StudyDate":
            low, high = value.split("-")
            assert query.expected == {s.study_uid for s in studies if low <= s.study_date <= high}
        elif name == "PatientName":
            prefix = value.rstrip("*")
            assert query.expected == {
                s.study_uid for s in studies if s.patient_name.startswith(prefix)
            }
    assert "PatientName=" in mix.queries[1].path("/dicom-web")
    assert "^" in mix.queries[1].path("/dicom-web")


def _answer(uids: list[str]) -> Response:
    body = json.dumps([{"0020000D": {"vr": "UI", "Value": [u]}} for u in uids]).encode()
    return Response(200, {}, body, len(body))


def test_query_judges_exact_sets_and_full_pages() -> None:
    small = Query("PatientID", (("PatientID", "P1"),), frozenset({"1.2", "1.3"}))
    assert small.judge(_answer(["1.3", "1.2"]))
    assert not small.judge(_answer(["1.2"]))
    many = frozenset(f"1.{n}" for n in range(LIMIT + 20))
    broad = Query("ModalitiesInStudy", (("ModalitiesInStudy", "CT"),), many)
    assert broad.judge(_answer(sorted(many)[:LIMIT]))
    assert not broad.judge(_answer(sorted(many)[: LIMIT - 1]))
    assert not broad.judge(_answer([*sorted(many)[: LIMIT - 1], "9.9"]))


def test_verdict_needs_ratio_limits_and_correct_answers() -> None:
    scenario = Scenario("x", "x", "req/s", min_ratio=5, max_p99_ms=50)
    scenario.figures[OURS] = Figures(value=600, p99_ms=20, requests=10)
    scenario.figures[ORTHANC_NAME] = Figures(value=100)
    assert scenario.verdict() == "PASS"
    scenario.figures[OURS].p99_ms = 80
    assert scenario.misses() == ["p99 80.0 ms"]
    scenario.figures[OURS] = Figures(value=400, p99_ms=20, wrong=1, requests=10)
    assert scenario.verdict() == "MISS" and len(scenario.misses()) == 2
    alone = Scenario("y", "y", "inst/s", checks={"tail": False})
    alone.figures[OURS] = Figures(value=1, requests=1)
    assert alone.misses() == ["tail: no"]
    unjudged = Scenario("z", "z", "req/s", min_ratio=50, max_p99_ms=50)
    unjudged.figures[OURS] = Figures(value=600, p99_ms=20, requests=10)
    assert unjudged.target_text() == ">=50x not judged, p99<50ms"
    unjudged.figures[ORTHANC_NAME] = Figures(value=100)
    assert unjudged.target_text() == ">=50x, p99<50ms"


def test_cpu_per_instance_compares_first_and_last_tenth() -> None:
    # 1 ms of CPU per instance up to 500 instances, 2 ms after.
    samples = [(n, n * 0.001) for n in range(0, 501, 50)]
    samples += [(n, 0.5 + (n - 500) * 0.002) for n in range(550, 1001, 50)]
    first, last = cpu_per_instance(samples, 1000)
    assert first == pytest.approx(1.0)
    assert last == pytest.approx(2.0)


def test_request_cost_refuses_a_folder_without_the_benchmark_data(tmp_path: Path) -> None:
    import request_cost

    from dicomweb_server.index.database import upgrade_schema

    with pytest.raises(SystemExit, match=r"holds no index\.sqlite"):
        request_cost.main(["--data-dir", str(tmp_path)])
    upgrade_schema(f"sqlite:///{tmp_path / 'index.sqlite'}")
    with pytest.raises(SystemExit, match="no multi-frame rle object"):
        request_cost.frame_targets(tmp_path, "rle", 10)
    with pytest.raises(SystemExit, match="unknown --what: nope"):
        request_cost.main(["--data-dir", str(tmp_path), "--what", "frames,nope"])


def test_request_cost_reads_the_index_the_server_would_use(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL index named by $DICOMWEB_DATABASE_URL, else the folder's SQLite file."""
    import request_cost

    if database_url.startswith("sqlite"):
        monkeypatch.delenv("DICOMWEB_DATABASE_URL", raising=False)
        assert request_cost.index_url(tmp_path) == database_url
    else:
        monkeypatch.setenv("DICOMWEB_DATABASE_URL", database_url)
        assert str(request_cost.index_url(tmp_path)).startswith("postgresql+psycopg://")
    # Both read the (empty) index: no multi-frame object in it, said plainly.
    with pytest.raises(SystemExit, match="no multi-frame rle object"):
        request_cost.frame_targets(tmp_path, "rle", 10)


def test_request_cost_stores_a_new_instance_with_every_stow_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import request_cost

    monkeypatch.setenv("DICOMWEB_AUTH", "off")  # restored after the test; main sets both
    monkeypatch.setenv("DICOMWEB_AUDIT_DIR", str(tmp_path))
    targets = request_cost.StowTargets(3)
    uids = set()
    for target in targets:
        assert target.body is not None
        content_type = target.content_type.decode()
        [(_, data)] = parts(b"".join(target.body), content_type)
        uids.add(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
    assert len(uids) == 3  # each request stores an instance of its own
    with pytest.raises(IndexError):
        targets[3]

    # Every request must be answered 200, or the script refuses to report a figure.
    request_cost.main(["--what", "stow", "--requests", "2", "--rounds", "2", "--warmup", "1"])
    assert re.search(r"^stow: \d+ µs CPU per request", capsys.readouterr().out, re.MULTILINE)
    with pytest.raises(SystemExit, match="frames and qido need --data-dir"):
        request_cost.main(["--what", "stow,qido"])


def test_the_stow_ceiling_keeps_each_part_as_a_durable_file(tmp_path: Path) -> None:
    """The bare-ASGI ceiling, run as the benchmark runs it, stores what STOW-RS sends it."""
    from benchlib.client import Request, fetch
    from benchlib.ingest import verify_ceiling_store
    from benchlib.servers import start_ceiling

    study = make_studies(1, kind=41)[0]
    template = SmallInstance()
    instances = [template.instance(study, kind=41, number=n, per_series=3) for n in range(3)]
    folder = tmp_path / "store"
    server = start_ceiling(tmp_path, None, workers=1, store=folder)
    try:
        headers = (("Content-Type", STOW_CONTENT_TYPE), ("Accept", "application/dicom+json"))
        path = server.path("/studies")
        for batch in (instances[:1], instances[1:]):
            answer = fetch(
                server.host, server.port, Request("POST", path, headers, stow_body(batch))
            )
            assert answer.status == 200, answer.body
        plain = (("Content-Type", "application/dicom"),)
        refused = fetch(server.host, server.port, Request("POST", path, plain, instances[0]))
        assert refused.status == 415
        torn = stow_body(instances[:1])[:200]  # the boundary, no part end, no closing line
        refused = fetch(server.host, server.port, Request("POST", path, headers, torn))
        assert refused.status == 415
    finally:
        server.stop()
    stored = sorted(path.read_bytes() for path in folder.glob("*.dcm"))
    assert stored == sorted(instances)
    assert not list(folder.glob(".*.tmp"))
    assert verify_ceiling_store(folder, set(), instances, 3) == (4, 0)
    assert verify_ceiling_store(folder, set(), instances[:1], 3) == (4, 2)
