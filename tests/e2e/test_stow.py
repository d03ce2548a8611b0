"""STOW-RS end to end: a real server, dicomweb-client and httpx."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from lxml import etree
from pydicom.uid import generate_uid

from tests.dicom_files import (
    BUNDLED,
    bundled_bytes,
    dataset_from_bytes,
    make_ct,
    multipart,
    split_multipart,
    stow_content_type,
)
from tests.e2e.server import ServerProcess, blob_keys, staged_files, store_concurrently

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def stow(
    http: httpx.Client, parts: list[bytes], path: str = "/studies", **headers: str
) -> httpx.Response:
    return http.post(
        path,
        content=multipart(parts),
        headers={
            "Content-Type": stow_content_type(),
            "Accept": "application/dicom+json",
            **headers,
        },
    )


def retrieve_instance_bytes(http: httpx.Client, data: bytes) -> bytes:
    ds = dataset_from_bytes(data)
    response = http.get(
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
        headers={"Accept": ANY_SYNTAX},
    )
    assert response.status_code == 200, response.text
    parts = list(split_multipart(response.content, response.headers["content-type"]))
    assert len(parts) == 1
    return parts[0][1]


def blob_files(server: ServerProcess) -> list[str]:
    return blob_keys(server.data_dir)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_files_round_trip_with_dicomweb_client(
    dicomweb: DICOMwebClient, http: httpx.Client, name: str
) -> None:
    ds = dataset_from_bytes(bundled_bytes(name))
    result = dicomweb.store_instances([ds])
    referenced = result.ReferencedSOPSequence
    assert [item.ReferencedSOPInstanceUID for item in referenced] == [ds.SOPInstanceUID]
    assert referenced[0].RetrieveURL.endswith(
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    back = dicomweb.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert back.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert [element.tag for element in back] == [element.tag for element in ds]
    for element in ds:
        assert back[element.tag].value == element.value, element
    # Leave the SOP Instance free for the byte-exact test below, which stores the file's
    # own bytes rather than dicomweb-client's re-encoding of them.
    dicomweb.delete_study(ds.StudyInstanceUID)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_files_stored_exactly_as_received(http: httpx.Client, name: str) -> None:
    data = bundled_bytes(name)
    ds = dataset_from_bytes(data)
    # pydicom's MR_small variants share one SOP Instance UID: start from a clean slate.
    http.delete(f"/studies/{ds.StudyInstanceUID}")
    response = stow(http, [data])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    assert retrieve_instance_bytes(http, data) == data
    etag = http.get(
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
        headers={"Accept": ANY_SYNTAX},
    ).headers["etag"]
    assert etag == f'"{hashlib.sha256(data).hexdigest()}"'


def test_response_dataset_lists_every_instance(http: httpx.Client) -> None:
    study = generate_uid()
    parts = [make_ct(study_uid=study, instance_number=n) for n in range(3)]
    response = stow(http, parts)
    assert response.status_code == 200
    body = response.json()
    assert body["00081190"] == {
        "vr": "UR",
        "Value": [f"{str(http.base_url).rstrip('/')}/studies/{study}"],
    }
    items = body["00081199"]["Value"]
    assert [item["00081155"]["Value"][0] for item in items] == [
        dataset_from_bytes(part).SOPInstanceUID for part in parts
    ]
    for item in items:
        assert item["00081150"] == {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}
        assert item["00081190"]["vr"] == "UR"
    assert "00081198" not in body


@pytest.mark.parametrize(
    "content_type",
    [
        'multipart/related; type="application/dicom"; boundary="test-boundary-1234"',
        "multipart/related; type=application/dicom; boundary=test-boundary-1234",
        'Multipart/Related;Type="application/dicom";Boundary=test-boundary-1234',
        "multipart/related; boundary=test-boundary-1234",
    ],
)
def test_content_type_parameters_quoted_or_not(http: httpx.Client, content_type: str) -> None:
    response = http.post(
        "/studies", content=multipart([make_ct()]), headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text


def test_chunked_body_with_many_parts(http: httpx.Client) -> None:
    parts = [make_ct(instance_number=n) for n in range(40)]
    body = multipart(parts)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 7001):
            yield body[start : start + 7001]

    response = http.post(
        "/studies", content=chunks(), headers={"Content-Type": stow_content_type()}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["00081199"]["Value"]) == 40


def test_tolerates_leading_crlf_and_missing_final_crlf(http: httpx.Client) -> None:
    body = b"\r\n" + multipart([make_ct()]).rstrip(b"\r\n")
    response = http.post("/studies", content=body, headers={"Content-Type": stow_content_type()})
    assert response.status_code == 200, response.text


def test_other_content_type_is_415(http: httpx.Client) -> None:
    response = http.post(
        "/studies", content=make_ct(), headers={"Content-Type": "application/dicom"}
    )
    assert response.status_code == 415
    response = http.post(
        "/studies",
        content=b"{}",
        headers={"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=x'},
    )
    assert response.status_code == 415


def test_unparsable_multipart_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/studies", content=b"this is not multipart", headers={"Content-Type": stow_content_type()}
    )
    assert response.status_code == 400
    assert "boundary" in response.text
    response = http.post(
        "/studies",
        content=multipart([make_ct()]),
        headers={"Content-Type": 'multipart/related; type="application/dicom"'},
    )
    assert response.status_code == 400


def test_bad_parts_get_failure_items_and_do_not_stop_the_others(http: httpx.Client) -> None:
    good = make_ct()
    missing_uid = dataset_from_bytes(make_ct())
    del missing_uid.SeriesInstanceUID
    bad_uid = dataset_from_bytes(make_ct())
    bad_uid.SOPInstanceUID = "1.2.03.abc"
    bad_uid.file_meta.MediaStorageSOPInstanceUID = "1.2.03.abc"
    import io

    def encode(ds: object) -> bytes:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)  # type: ignore[attr-defined]
        return buffer.getvalue()

    response = stow(http, [b"not dicom at all", good, encode(missing_uid), encode(bad_uid)])
    assert response.status_code == 202, response.text
    body = response.json()
    assert [i["00081155"]["Value"][0] for i in body["00081199"]["Value"]] == [
        dataset_from_bytes(good).SOPInstanceUID
    ]
    failures = body["00081198"]["Value"]
    assert [f["00081197"]["Value"][0] for f in failures] == [0xC000, 0xA900, 0xA900]
    assert "Warning" in response.headers


def test_none_stored_is_409(http: httpx.Client) -> None:
    response = stow(http, [b"garbage", b"DICM"])
    assert response.status_code == 409
    assert len(response.json()["00081198"]["Value"]) == 2


def test_study_in_url_must_match(http: httpx.Client) -> None:
    study = generate_uid()
    inside = make_ct(study_uid=study)
    outside = make_ct()
    response = stow(http, [inside, outside], path=f"/studies/{study}")
    assert response.status_code == 202
    body = response.json()
    assert body["00081190"]["Value"][0].endswith(f"/studies/{study}")
    assert body["00081198"]["Value"][0]["00081197"]["Value"] == [0xC409]
    assert body["00081198"]["Value"][0]["00081155"]["Value"] == [
        dataset_from_bytes(outside).SOPInstanceUID
    ]
    assert stow(http, [make_ct()], path="/studies/not-a-uid").status_code == 400


def test_duplicates(server: ServerProcess, http: httpx.Client) -> None:
    data = make_ct()
    assert stow(http, [data]).status_code == 200
    before = blob_files(server)
    again = stow(http, [data])
    assert again.status_code == 200
    assert blob_files(server) == before
    ds = dataset_from_bytes(data)
    ds.PatientName = "Changed^Name"
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    conflict = stow(http, [buffer.getvalue()])
    assert conflict.status_code == 409
    assert conflict.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0111]
    assert blob_files(server) == before
    assert retrieve_instance_bytes(http, data) == data


def test_twenty_concurrent_stores_of_one_instance(
    server: ServerProcess, http: httpx.Client
) -> None:
    data = make_ct(rows=256, columns=256)
    before = set(blob_files(server))

    statuses = store_concurrently(server.root, multipart([data]), stow_content_type(), 20)
    assert statuses == [200] * 20
    assert len(set(blob_files(server)) - before) == 1
    assert retrieve_instance_bytes(http, data) == data


def test_xml_response_when_asked(http: httpx.Client) -> None:
    response = stow(http, [make_ct()], Accept="application/dicom+xml")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+xml"
    root = etree.fromstring(response.content)
    ns = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    assert root.xpath("//d:DicomAttribute[@tag='00081199']", namespaces=ns)


def test_series_already_in_another_study_is_refused_without_debris(http: httpx.Client) -> None:
    series = generate_uid()
    first = make_ct(series_uid=series)
    assert stow(http, [first]).status_code == 200
    other_study = generate_uid()
    response = stow(http, [make_ct(study_uid=other_study, series_uid=series)])
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    assert http.get("/studies", params={"StudyInstanceUID": other_study}).status_code == 204


def test_truncated_body_keeps_the_complete_parts(http: httpx.Client) -> None:
    complete = [make_ct(), make_ct()]
    body = multipart([*complete, make_ct()])
    cut = body[: len(body) - 3000]  # inside the third part's content
    response = http.post("/studies", content=cut, headers={"Content-Type": stow_content_type()})
    assert response.status_code == 202, response.text
    payload = response.json()
    stored = [item["00081155"]["Value"][0] for item in payload["00081199"]["Value"]]
    assert stored == [dataset_from_bytes(part).SOPInstanceUID for part in complete]
    assert [f["00081197"]["Value"] for f in payload["00081198"]["Value"]] == [[0xC000]]
    for part in complete:
        assert retrieve_instance_bytes(http, part) == part


def test_clients_going_away_do_not_stop_later_stores(
    server: ServerProcess, http: httpx.Client
) -> None:
    import socket

    # Several clients send complete parts and vanish before the answer.
    for _ in range(5):
        body = multipart([make_ct() for _ in range(33)])  # one batch commits mid-request
        head = (
            "POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: {stow_content_type()}\r\n"
            f"Content-Length: {len(body) + 1000}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(head + body)
    data = make_ct()
    assert stow(http, [data]).status_code == 200
    assert retrieve_instance_bytes(http, data) == data
    deadline = time.monotonic() + 10  # the server notices the disconnects asynchronously
    while staged_files(server.data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert staged_files(server.data_dir) == []
