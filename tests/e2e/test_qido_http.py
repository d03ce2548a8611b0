"""QIDO-RS over HTTP: the real server, dicomweb-client and OHIF-style requests."""

from __future__ import annotations

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from lxml import etree
from pydicom.uid import generate_uid

from tests.dicom_files import make_ct, multipart, split_multipart, stow_content_type
from tests.e2e.server import ServerProcess


@pytest.fixture(scope="module")
def stored(server: ServerProcess) -> dict[str, str]:
    study_a, study_b = generate_uid(), generate_uid()
    series_a = generate_uid()
    parts = [
        make_ct(
            study_uid=study_a,
            series_uid=series_a,
            patient_name="Müller^Hans",
            patient_id="QIDO-1",
            instance_number=n,
        )
        for n in range(1, 4)
    ] + [
        make_ct(
            study_uid=study_b,
            patient_name="Smith^Anna",
            patient_id="QIDO-2",
            modality="MR",
            extra={
                "StudyDate": "20230301",
                "AccessionNumber": "ACC-77",
                "StudyDescription": "Brain",
            },
        )
    ]
    with httpx.Client(base_url=server.root) as http:
        response = http.post(
            "/studies", content=multipart(parts), headers={"Content-Type": stow_content_type()}
        )
        assert response.status_code == 200
    return {"a": study_a, "b": study_b, "series_a": series_a}


def test_dicomweb_client_searches(dicomweb: DICOMwebClient, stored: dict[str, str]) -> None:
    studies = dicomweb.search_for_studies(search_filters={"PatientID": "QIDO-1"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [stored["a"]]
    study = studies[0]
    assert study["00201208"]["Value"] == [3]  # NumberOfStudyRelatedInstances
    assert study["00080061"]["Value"] == ["CT"]  # ModalitiesInStudy
    assert study["00081190"]["Value"][0].endswith(f"/studies/{stored['a']}")
    series = dicomweb.search_for_series(stored["a"])
    assert [s["0020000E"]["Value"][0] for s in series] == [stored["series_a"]]
    instances = dicomweb.search_for_instances(stored["a"], stored["series_a"])
    assert len(instances) == 3
    # Repeated includefield parameters, as dicomweb-client sends them.
    found = dicomweb.search_for_studies(
        search_filters={"PatientID": "QIDO-2"}, fields=["StudyDescription", "00100040"]
    )
    assert found[0]["00081030"]["Value"] == ["Brain"]


def test_ohif_study_list_request(http: httpx.Client, stored: dict[str, str]) -> None:
    response = http.get(
        "/studies?limit=101&offset=0&fuzzymatching=true"
        "&includefield=00081030%2C00080060%2C00080090%2C00100030&PatientName=*mul*",
        headers={"Accept": "application/dicom+json"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    uids = [item["0020000D"]["Value"][0] for item in response.json()]
    assert stored["a"] in uids and stored["b"] not in uids
    item = response.json()[0]
    for tag in ("00100010", "00100020", "00080020", "00080061", "00201206", "00201208"):
        assert tag in item, tag
    assert item["00100010"]["vr"] == "PN"
    assert item["00100010"]["Value"][0]["Alphabetic"] == "Müller^Hans"


def test_keys_by_tag_ranges_and_uid_lists(http: httpx.Client, stored: dict[str, str]) -> None:
    response = http.get("/studies", params={"00100020": "QIDO-2", "StudyDate": "20230101-20231231"})
    assert [i["0020000D"]["Value"][0] for i in response.json()] == [stored["b"]]
    response = http.get("/studies", params={"StudyInstanceUID": f"{stored['a']}\\{stored['b']}"})
    assert {i["0020000D"]["Value"][0] for i in response.json()} == {stored["a"], stored["b"]}
    response = http.get("/studies", params={"ModalitiesInStudy": "MR", "AccessionNumber": "ACC-7?"})
    assert [i["0020000D"]["Value"][0] for i in response.json()] == [stored["b"]]


def test_no_match_is_204(http: httpx.Client) -> None:
    response = http.get("/studies", params={"PatientID": "nobody-has-this"})
    assert response.status_code == 204
    assert response.content == b""


def test_bad_queries_are_400_with_reason(http: httpx.Client) -> None:
    for params in (
        {"NoSuchKeyword": "x"},
        {"StudyDate": "2023-13-45"},
        {"StudyInstanceUID": "1.2.abc"},
        {"limit": "-1"},
        {"Rows": "512"},
    ):
        response = http.get("/studies", params=params)
        assert response.status_code == 400, params
        assert response.text.strip()
        assert response.headers["warning"].startswith("299 ")


def test_limit_offset_and_warning(http: httpx.Client, stored: dict[str, str]) -> None:
    response = http.get("/studies", params={"limit": 1, "PatientID": "QIDO-*"})
    assert response.status_code == 200
    assert len(response.json()) == 1
    assert "There are 1 additional results that can be requested" in response.headers["warning"]
    second = http.get("/studies", params={"limit": 1, "offset": 1, "PatientID": "QIDO-*"})
    assert second.json()[0] != response.json()[0]
    assert "warning" not in second.headers


def test_all_six_forms(http: httpx.Client, stored: dict[str, str]) -> None:
    study, series = stored["a"], stored["series_a"]
    for path, expected in (
        ("/studies", 1),
        ("/series", 1),
        ("/instances", 3),
        (f"/studies/{study}/series", 1),
        (f"/studies/{study}/instances", 3),
        (f"/studies/{study}/series/{series}/instances", 3),
    ):
        response = http.get(path, params={"PatientID": "QIDO-1"})
        assert response.status_code == 200, path
        assert len(response.json()) == expected, path


def test_xml_results(http: httpx.Client, stored: dict[str, str]) -> None:
    response = http.get(
        "/studies",
        params={"PatientID": "QIDO-*"},
        headers={"Accept": 'multipart/related; type="application/dicom+xml"'},
    )
    assert response.status_code == 200
    parts = list(split_multipart(response.content, response.headers["content-type"]))
    assert len(parts) == 2
    for headers, content in parts:
        assert headers["content-type"] == "application/dicom+xml"
        assert (
            etree.fromstring(content).tag
            == "{http://dicom.nema.org/PS3.19/models/NativeDICOM}NativeDicomModel"
        )
