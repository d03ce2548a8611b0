"""Zip retrieval (PS3.18 8.7.3.1), Retrieve Capabilities (OPTIONS, PS3.18 8.9 / Annex H)
and CORS for browser viewers, end to end."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from lxml import etree
from pydicom.uid import generate_uid

from tests.dicom_files import bundled_bytes, dataset_from_bytes, instance_path, with_new_uids
from tests.e2e.server import ServerProcess

EXPLICIT_LE = "1.2.840.10008.1.2.1"
WADL = "application/vnd.sun.wadl+xml"
WADL_NS = {"w": "http://wadl.dev.java.net/2009/02"}
ORIGIN = "http://viewer.example"
FRAMES = "studies/{study}/series/{series}/instances/{instance}/frames/{frameList}"


def store(root: str, parts: list[bytes]) -> None:
    boundary = "extras-test-boundary"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            for part in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    response = httpx.post(
        root + "/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def study(server: ServerProcess) -> dict[str, object]:
    """Two series: a native CT and a JPEG-LS MR, then a big-endian MR."""
    study_uid, first, second = generate_uid(), generate_uid(), generate_uid()
    parts = [
        with_new_uids(bundled_bytes("CT_small.dcm"), study_uid, first),
        with_new_uids(bundled_bytes("MR_small_jpeg_ls_lossless.dcm"), study_uid, first),
        with_new_uids(bundled_bytes("MR_small_bigendian.dcm"), study_uid, second),
    ]
    store(server.root, parts)
    return {"study": study_uid, "series": [first, second], "parts": parts}


def entries(response: httpx.Response) -> dict[str, bytes]:
    """The zip's Part 10 files by SOP Instance UID."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    package = zipfile.ZipFile(io.BytesIO(response.content))
    assert package.testzip() is None
    names = package.namelist()
    assert len(names) == len(set(names))
    files: dict[str, bytes] = {}
    for name in names:
        assert name.endswith(".dcm"), name
        data = package.read(name)
        assert data[128:132] == b"DICM", name
        files[str(dataset_from_bytes(data).SOPInstanceUID)] = data
    return files


def by_uid(parts: list[bytes]) -> dict[str, bytes]:
    return {str(dataset_from_bytes(part).SOPInstanceUID): part for part in parts}


# --- application/zip --------------------------------------------------------------------


def test_zip_of_study_and_series_as_stored(http: httpx.Client, study: dict[str, object]) -> None:
    parts: list[bytes] = study["parts"]  # type: ignore[assignment]
    series: list[str] = study["series"]  # type: ignore[assignment]
    accept = {"Accept": "application/zip; transfer-syntax=*"}
    files = entries(http.get(f"/studies/{study['study']}", headers=accept))
    assert files == by_uid(parts)  # byte-identical to what was stored
    files = entries(http.get(f"/studies/{study['study']}/series/{series[0]}", headers=accept))
    assert files == by_uid(parts[:2])
    files = entries(http.get(instance_path(parts[2]), headers=accept))
    assert files == by_uid(parts[2:])


def test_zip_default_is_explicit_little_endian(
    http: httpx.Client, study: dict[str, object]
) -> None:
    parts: list[bytes] = study["parts"]  # type: ignore[assignment]
    for accept in ("application/zip", f"application/zip; transfer-syntax={EXPLICIT_LE}"):
        files = entries(http.get(f"/studies/{study['study']}", headers={"Accept": accept}))
        originals = by_uid(parts)
        assert set(files) == set(originals)
        for uid, data in files.items():
            delivered, original = dataset_from_bytes(data), dataset_from_bytes(originals[uid])
            assert delivered.file_meta.TransferSyntaxUID == EXPLICIT_LE, accept
            assert delivered.PatientName == original.PatientName
            assert np.array_equal(delivered.pixel_array, original.pixel_array), accept


def test_zip_not_found_and_not_acceptable(http: httpx.Client, study: dict[str, object]) -> None:
    response = http.get(f"/studies/{generate_uid()}", headers={"Accept": "application/zip"})
    assert response.status_code == 404
    response = http.get(
        f"/studies/{study['study']}", headers={"Accept": "application/zip; transfer-syntax=1.2.3"}
    )
    assert response.status_code == 406


# --- OPTIONS: Retrieve Capabilities -----------------------------------------------------


def wadl(response: httpx.Response) -> etree._Element:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == WADL
    return etree.fromstring(response.content)


def resources(document: etree._Element) -> dict[str, etree._Element]:
    return {r.get("path"): r for r in document.iterfind(".//w:resource", WADL_NS)}


def responses(resource: etree._Element, method: str) -> set[str]:
    [element] = resource.xpath("w:method[@name=$m]", namespaces=WADL_NS, m=method)
    return {r.get("mediaType") for r in element.iterfind("w:response/w:representation", WADL_NS)}


def test_options_on_the_service_root_is_wadl(server: ServerProcess) -> None:
    for url in (server.root, server.root + "/"):
        response = httpx.options(url, headers={"Accept": "*/*"})
        document = wadl(response)
        for method in ("GET", "POST", "DELETE", "OPTIONS"):
            assert method in response.headers["allow"], url
        found = resources(document)
        base = document.find(".//w:resources", WADL_NS)
        assert base is not None and base.get("base", "").startswith(server.root)
        for path in ("studies", "series", "instances", "studies/{study}", FRAMES):
            assert path in found, path
        assert 'multipart/related; type="application/dicom+xml"' in responses(
            found["studies"], "GET"
        )
        assert "application/dicom+json" in responses(found["studies"], "GET")
        frames = responses(found[FRAMES], "GET")
        assert 'multipart/related; type="application/octet-stream"' in frames
        assert "application/octet-stream" in frames
        rendered = [p for p in found if p.endswith("/rendered")]
        thumbnails = [p for p in found if p.endswith("/thumbnail")]
        assert len(rendered) == 4 and len(thumbnails) == 3  # study, series, instance (+frames)
        for path in rendered + thumbnails:
            assert {"image/jpeg", "image/png"} <= responses(found[path], "GET"), path
        retrieve = responses(found["studies/{study}"], "GET")
        assert {'multipart/related; type="application/dicom"', "application/zip"} <= retrieve


def test_options_on_one_resource(server: ServerProcess, study: dict[str, object]) -> None:
    parts: list[bytes] = study["parts"]  # type: ignore[assignment]
    response = httpx.options(server.root + instance_path(parts[0]) + "/frames/1")
    found = resources(wadl(response))
    assert list(found) == [FRAMES]
    allowed = [method.strip() for method in response.headers["allow"].split(",")]
    assert "GET" in allowed and "POST" not in allowed and "DELETE" not in allowed
    response = httpx.options(server.root + f"/studies/{study['study']}")
    allowed = [method.strip() for method in response.headers["allow"].split(",")]
    assert {"GET", "POST", "DELETE"} <= set(allowed)
    assert list(resources(wadl(response))) == ["studies/{study}"]


def test_options_as_json_and_unknown_paths(server: ServerProcess) -> None:
    response = httpx.options(server.root, headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    description = response.json()
    paths = {resource["path"] for resource in description["resources"]}
    assert FRAMES in paths and "studies" in paths
    response = httpx.options(server.root + "/no-such-resource/here")
    assert response.status_code == 404
    response = httpx.options(server.root + "/studies/1.2.3/frobnicate")
    assert response.status_code == 404


# --- CORS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("cors") / "data", env={"DICOMWEB_CORS_ORIGINS": ORIGIN}
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def cors_instance(cors_server: ServerProcess) -> str:
    data = with_new_uids(bundled_bytes("CT_small.dcm"), generate_uid(), generate_uid())
    store(cors_server.root, [data])
    return cors_server.root + instance_path(data)


def header_list(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


def test_cors_preflight(cors_instance: str) -> None:
    response = httpx.options(
        cors_instance + "/frames/1",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept, authorization, range",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert {"accept", "authorization", "range"} <= header_list(
        response.headers["access-control-allow-headers"]
    )
    assert "GET" in response.headers["access-control-allow-methods"]


def test_cors_actual_request(cors_instance: str) -> None:
    response = httpx.get(
        cors_instance + "/frames/1",
        headers={"Origin": ORIGIN, "Accept": "application/octet-stream"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "origin" in header_list(response.headers.get("vary", ""))
    exposed = header_list(response.headers["access-control-expose-headers"])
    assert {"content-location", "etag", "warning", "content-range"} <= exposed


def test_cors_other_origin_is_not_allowed(cors_instance: str) -> None:
    response = httpx.get(
        cors_instance + "/metadata",
        headers={"Origin": "http://evil.example", "Accept": "application/dicom+json"},
    )
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    response = httpx.options(
        cors_instance + "/frames/1",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in response.headers


def test_no_cors_headers_without_the_setting(
    server: ServerProcess, study: dict[str, object]
) -> None:
    parts: list[bytes] = study["parts"]  # type: ignore[assignment]
    url = server.root + instance_path(parts[0])
    response = httpx.get(
        url + "/metadata", headers={"Origin": ORIGIN, "Accept": "application/dicom+json"}
    )
    assert response.status_code == 200
    assert not [name for name in response.headers if name.lower().startswith("access-control-")]
    response = httpx.options(
        url + "/frames/1",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
    )
    assert not [name for name in response.headers if name.lower().startswith("access-control-")]
