"""WADO-RS end to end: retrieval, transfer syntax negotiation, metadata, bulk data, delete."""

from __future__ import annotations

import httpx
import numpy as np
import orjson
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from lxml import etree
from pydicom.uid import generate_uid

from tests.dicom_files import (
    bundled_bytes,
    dataset_from_bytes,
    instance_path,
    make_ct,
    multipart,
    split_multipart,
    stow_content_type,
)
from tests.e2e.server import ServerProcess

ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def store(http: httpx.Client, parts: list[bytes]) -> None:
    # Some bundled files share SOP Instance UIDs (variants of one dataset): replace them.
    for part in parts:
        ds = dataset_from_bytes(part)
        path = (
            f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
        http.delete(path)
    response = http.post(
        "/studies", content=multipart(parts), headers={"Content-Type": stow_content_type()}
    )
    assert response.status_code in (200, 202), response.text


@pytest.fixture(scope="module")
def study(server: ServerProcess) -> dict[str, object]:
    """A study of two series (3 + 2 instances) stored once for this module."""
    study_uid = generate_uid()
    series = [generate_uid(), generate_uid()]
    parts = [
        make_ct(study_uid=study_uid, series_uid=series[0], instance_number=n) for n in (3, 1, 2)
    ] + [
        make_ct(study_uid=study_uid, series_uid=series[1], instance_number=n, modality="MR")
        for n in (1, 2)
    ]
    with httpx.Client(base_url=server.root) as client:
        store(client, parts)
    return {"study": study_uid, "series": series, "parts": parts}


def test_retrieve_study_series_instance(http: httpx.Client, study: dict[str, object]) -> None:
    parts: list[bytes] = study["parts"]  # type: ignore[assignment]
    response = http.get(f"/studies/{study['study']}", headers={"Accept": ANY})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/dicom"'
    )
    received = list(split_multipart(response.content, response.headers["content-type"]))
    assert sorted(content for _, content in received) == sorted(parts)
    for headers, content in received:
        assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
        assert headers["content-location"].endswith(instance_path(content))
    # Instances of a series come in Instance Number order.
    series_uid = study["series"][0]  # type: ignore[index]
    response = http.get(f"/studies/{study['study']}/series/{series_uid}", headers={"Accept": ANY})
    numbers = [
        dataset_from_bytes(content).InstanceNumber
        for _, content in split_multipart(response.content, response.headers["content-type"])
    ]
    assert numbers == [1, 2, 3]


def test_retrieve_with_dicomweb_client(dicomweb: DICOMwebClient, study: dict[str, object]) -> None:
    instances = dicomweb.retrieve_study(study["study"])
    assert len(instances) == 5
    series = dicomweb.retrieve_series(study["study"], study["series"][1])  # type: ignore[index]
    assert sorted(ds.InstanceNumber for ds in series) == [1, 2]


def test_no_accept_header_is_406(server: ServerProcess, study: dict[str, object]) -> None:
    # httpx always sends Accept: */*, so speak HTTP without it.
    import socket

    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            f"GET /dicom-web/studies/{study['study']} HTTP/1.1\r\nHost: x\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 406")


def test_wildcard_accept_gets_default_representation(
    http: httpx.Client, study: dict[str, object]
) -> None:
    response = http.get(f"/studies/{study['study']}", headers={"Accept": "*/*"})
    assert response.status_code == 200
    assert 'type="application/dicom"' in response.headers["content-type"]


def test_not_offered_media_type_is_406(http: httpx.Client, study: dict[str, object]) -> None:
    response = http.get(f"/studies/{study['study']}", headers={"Accept": "image/png"})
    assert response.status_code == 406
    response = http.get(
        f"/studies/{study['study']}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4'},
    )
    assert response.status_code == 406


def test_unknown_and_malformed_uids(http: httpx.Client) -> None:
    assert http.get(f"/studies/{generate_uid()}", headers={"Accept": ANY}).status_code == 404
    assert http.get("/studies/1.2.abc", headers={"Accept": ANY}).status_code == 400
    assert http.get(f"/studies/{generate_uid()}/metadata").status_code == 404


def test_default_transfer_syntax_transcodes_compressed_to_explicit_le(http: httpx.Client) -> None:
    data = bundled_bytes("JPEG2000.dcm")
    store(http, [data])
    response = http.get(
        instance_path(data), headers={"Accept": 'multipart/related; type="application/dicom"'}
    )
    assert response.status_code == 200, response.text
    [(headers, content)] = list(split_multipart(response.content, response.headers["content-type"]))
    assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    delivered = dataset_from_bytes(content)
    assert delivered.file_meta.TransferSyntaxUID == EXPLICIT_LE
    original = dataset_from_bytes(data)
    assert np.array_equal(delivered.pixel_array, original.pixel_array)
    # Stored bytes are untouched.
    response = http.get(instance_path(data), headers={"Accept": ANY})
    parts = split_multipart(response.content, response.headers["content-type"])
    assert next(iter(parts))[1] == data


@pytest.mark.parametrize(
    "target",
    ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"],
    ids=["rle", "jpeg-ls", "j2k"],
)
@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm"])
def test_instances_transcoded_to_lossless_syntaxes(
    http: httpx.Client, name: str, target: str
) -> None:
    data = bundled_bytes(name)
    store(http, [data])
    original = dataset_from_bytes(data)
    study_path = f"/studies/{original.StudyInstanceUID}"
    for path in (instance_path(data), study_path):
        response = http.get(
            path,
            headers={
                "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={target}'
            },
        )
        assert response.status_code == 200, response.text
        parts = list(split_multipart(response.content, response.headers["content-type"]))
        by_uid = {dataset_from_bytes(c).SOPInstanceUID: (h, c) for h, c in parts}
        headers, content = by_uid[original.SOPInstanceUID]
        assert headers["content-type"] == f"application/dicom; transfer-syntax={target}"
        delivered = dataset_from_bytes(content)
        assert delivered.file_meta.TransferSyntaxUID == target
        assert np.array_equal(delivered.pixel_array, original.pixel_array)


def test_lossy_instance_target_is_406(http: httpx.Client) -> None:
    data = bundled_bytes("CT_small.dcm")
    store(http, [data])
    response = http.get(
        instance_path(data),
        headers={
            "Accept": 'multipart/related; type="application/dicom"; '
            "transfer-syntax=1.2.840.10008.1.2.4.50"
        },
    )
    assert response.status_code == 406


def test_implicit_vr_is_delivered_explicit_by_default(http: httpx.Client) -> None:
    data = bundled_bytes("MR_small_implicit.dcm")
    store(http, [data])
    response = http.get(
        instance_path(data), headers={"Accept": 'multipart/related; type="application/dicom"'}
    )
    [(_, content)] = list(split_multipart(response.content, response.headers["content-type"]))
    delivered = dataset_from_bytes(content)
    assert delivered.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(delivered.pixel_array, dataset_from_bytes(data).pixel_array)


def test_q_values_choose_the_transfer_syntax(http: httpx.Client) -> None:
    data = bundled_bytes("MR_small_jpeg_ls_lossless.dcm")
    store(http, [data])
    dicom = 'multipart/related; type="application/dicom"'
    accept = (
        f"{dicom}; transfer-syntax=1.2.840.10008.1.2.4.80; q=0.9, "
        f"{dicom}; transfer-syntax=1.2.840.10008.1.2.1; q=0.5"
    )
    response = http.get(instance_path(data), headers={"Accept": accept})
    [(headers, _)] = list(split_multipart(response.content, response.headers["content-type"]))
    assert headers["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2.4.80")


def test_metadata_is_dicom_json_with_absolute_bulk_data_uris(
    http: httpx.Client, server: ServerProcess
) -> None:
    data = bundled_bytes("CT_small.dcm")
    store(http, [data])
    ds = dataset_from_bytes(data)
    response = http.get(
        instance_path(data) + "/metadata", headers={"Accept": "application/dicom+json"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    [metadata] = response.json()
    expected = ds.to_json_dict(1024, lambda element: "BULK")
    assert set(metadata) == set(expected)
    for tag, attribute in expected.items():
        if "BulkDataURI" in attribute:
            continue
        assert metadata[tag] == attribute, tag
    pixel_uri = metadata["7FE00010"]["BulkDataURI"]
    assert pixel_uri.startswith(server.root + "/studies/")
    bulk = http.get(
        pixel_uri, headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    assert bulk.status_code == 200
    [(headers, content)] = list(split_multipart(bulk.content, bulk.headers["content-type"]))
    assert headers["content-type"].startswith("application/octet-stream")
    assert content == ds.PixelData


def test_bulk_data_uri_honours_forwarded_headers(http: httpx.Client) -> None:
    data = bundled_bytes("CT_small.dcm")
    store(http, [data])
    response = http.get(
        instance_path(data) + "/metadata",
        headers={
            "Accept": "application/dicom+json",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "pacs.example.org",
            "X-Forwarded-Prefix": "/archive",
        },
    )
    uri = response.json()[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith("https://pacs.example.org/archive/dicom-web/studies/")
    response = http.get(
        instance_path(data) + "/metadata",
        headers={
            "Accept": "application/dicom+json",
            "Forwarded": 'proto=https;host="h.example:8443"',
        },
    )
    assert response.json()[0]["7FE00010"]["BulkDataURI"].startswith(
        "https://h.example:8443/dicom-web/"
    )


def test_series_metadata_in_instance_order_and_xml(
    http: httpx.Client, study: dict[str, object]
) -> None:
    series_uid = study["series"][0]  # type: ignore[index]
    path = f"/studies/{study['study']}/series/{series_uid}/metadata"
    items = http.get(path, headers={"Accept": "application/dicom+json"}).json()
    assert [item["00200013"]["Value"][0] for item in items] == [1, 2, 3]
    response = http.get(path, headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert response.status_code == 200
    documents = list(split_multipart(response.content, response.headers["content-type"]))
    assert len(documents) == 3
    for headers, content in documents:
        assert headers["content-type"] == "application/dicom+xml"
        assert etree.fromstring(content).tag.endswith("NativeDicomModel")
    study_items = http.get(
        f"/studies/{study['study']}/metadata", headers={"Accept": "application/dicom+json"}
    ).json()
    assert len(study_items) == 5


def test_encapsulated_pixel_data_bulk_is_per_frame(http: httpx.Client) -> None:
    data = bundled_bytes("JPEG2000.dcm")
    store(http, [data])
    metadata = http.get(
        instance_path(data) + "/metadata", headers={"Accept": "application/dicom+json"}
    ).json()[0]
    uri = metadata["7FE00010"]["BulkDataURI"]
    response = http.get(uri, headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert response.status_code == 200, response.text
    parts = list(split_multipart(response.content, response.headers["content-type"]))
    ds = dataset_from_bytes(data)
    frames = list(
        pydicom.encaps.generate_frames(
            ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))
        )
    )
    assert [content for _, content in parts] == frames
    # The Pixel Data BulkDataURI is frame-capable: asked for uncompressed data, it answers
    # like the frames resource, one decoded Explicit VR Little Endian part per frame.
    decoded = http.get(
        uri, headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    assert decoded.status_code == 200, decoded.text
    decoded_parts = list(split_multipart(decoded.content, decoded.headers["content-type"]))
    assert len(decoded_parts) == len(frames)
    headers, content = decoded_parts[0]
    assert "transfer-syntax=1.2.840.10008.1.2.1" in headers["content-type"]
    assert content == ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("<")).tobytes()
    lossy = http.get(
        uri,
        headers={
            "Accept": 'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50'
        },
    )
    assert lossy.status_code == 406


def test_deflated_instance_metadata_and_bulk(http: httpx.Client) -> None:
    data = bundled_bytes("image_dfl.dcm")
    store(http, [data])
    metadata = http.get(
        instance_path(data) + "/metadata", headers={"Accept": "application/dicom+json"}
    ).json()[0]
    uri = metadata["7FE00010"]["BulkDataURI"]
    response = http.get(
        uri, headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    assert response.status_code == 200
    [(_, content)] = list(split_multipart(response.content, response.headers["content-type"]))
    assert content == dataset_from_bytes(data).PixelData


def test_delete_instance_series_study(http: httpx.Client, server: ServerProcess) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    parts = [
        make_ct(study_uid=study_uid, series_uid=series_uid, instance_number=n) for n in range(3)
    ]
    other = make_ct(study_uid=study_uid)
    store(http, [*parts, other])
    assert http.delete(instance_path(parts[0])).status_code == 204
    assert http.get(instance_path(parts[0]), headers={"Accept": ANY}).status_code == 404
    assert http.delete(instance_path(parts[0])).status_code == 404
    assert http.delete(f"/studies/{study_uid}/series/{series_uid}").status_code == 204
    assert (
        http.get(f"/studies/{study_uid}/series/{series_uid}", headers={"Accept": ANY}).status_code
        == 404
    )
    assert http.get(f"/studies/{study_uid}", headers={"Accept": ANY}).status_code == 200
    assert http.delete(f"/studies/{study_uid}").status_code == 204
    assert http.get(f"/studies/{study_uid}", headers={"Accept": ANY}).status_code == 404
    assert http.get("/studies", params={"StudyInstanceUID": study_uid}).status_code == 204
    # Blobs are gone too: storing again works and the bytes are served.
    store(http, [other])
    response = http.get(instance_path(other), headers={"Accept": ANY})
    parts = split_multipart(response.content, response.headers["content-type"])
    assert next(iter(parts))[1] == other


def test_etag_and_if_none_match(http: httpx.Client, study: dict[str, object]) -> None:
    parts: list[bytes] = study["parts"]  # type: ignore[assignment]
    first = http.get(instance_path(parts[0]), headers={"Accept": ANY})
    etag = first.headers["etag"]
    again = http.get(instance_path(parts[0]), headers={"Accept": ANY, "If-None-Match": etag})
    assert again.status_code == 304


def test_accept_query_parameter(http: httpx.Client, study: dict[str, object]) -> None:
    response = http.get(
        f"/studies/{study['study']}/metadata",
        params={"accept": "application/dicom+json"},
        headers={"Accept": "*/*"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    assert orjson.loads(response.content)


@pytest.mark.parametrize(
    "name", ["MR_small_bigendian.dcm", "SC_rgb_small_odd_big_endian.dcm", "rtdose.dcm"]
)
def test_default_retrieval_re_encodes_every_uncompressed_syntax(
    http: httpx.Client, name: str
) -> None:
    data = bundled_bytes(name)
    store(http, [data])
    response = http.get(
        instance_path(data), headers={"Accept": 'multipart/related; type="application/dicom"'}
    )
    assert response.status_code == 200, response.text
    [(headers, content)] = list(split_multipart(response.content, response.headers["content-type"]))
    assert headers["content-type"].endswith(EXPLICIT_LE)
    delivered, original = dataset_from_bytes(content), dataset_from_bytes(data)
    assert delivered.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(delivered.pixel_array, original.pixel_array)
    assert "etag" not in response.headers  # the part is not the stored bytes


def test_big_endian_bulk_data_is_delivered_little_endian(http: httpx.Client) -> None:
    data = bundled_bytes("MR_small_bigendian.dcm")
    store(http, [data])
    metadata = http.get(instance_path(data) + "/metadata").json()[0]
    response = http.get(
        metadata["7FE00010"]["BulkDataURI"],
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    [(headers, content)] = list(split_multipart(response.content, response.headers["content-type"]))
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    expected = dataset_from_bytes(data).pixel_array.astype("<u2").tobytes()
    assert content == expected


def test_compressed_pixel_bulk_data_with_wildcard_accept(http: httpx.Client) -> None:
    data = bundled_bytes("JPEG2000.dcm")
    store(http, [data])
    uri = http.get(instance_path(data) + "/metadata").json()[0]["7FE00010"]["BulkDataURI"]
    response = http.get(uri, headers={"Accept": "*/*"})
    assert response.status_code == 200
    assert 'type="image/jp2"' in response.headers["content-type"]


def test_if_none_match_lists_and_weak_tags(http: httpx.Client, study: dict[str, object]) -> None:
    parts: list[bytes] = study["parts"]  # type: ignore[assignment]
    etag = http.get(instance_path(parts[0]), headers={"Accept": ANY}).headers["etag"]
    for header in (f'"other", {etag}', f"W/{etag}", "*"):
        response = http.get(
            instance_path(parts[0]), headers={"Accept": ANY, "If-None-Match": header}
        )
        assert response.status_code == 304, header
    response = http.get(instance_path(parts[0]), headers={"Accept": ANY, "If-None-Match": '"x"'})
    assert response.status_code == 200


def test_malformed_accept_entries_are_ignored(http: httpx.Client, study: dict[str, object]) -> None:
    response = http.get(
        f"/studies/{study['study']}/metadata",
        headers={"Accept": "garbage;;, application/dicom+json"},
    )
    assert response.status_code == 200


def test_single_instance_representation_is_stable(
    http: httpx.Client, study: dict[str, object]
) -> None:
    parts: list[bytes] = study["parts"]  # type: ignore[assignment]
    first = http.get(instance_path(parts[0]), headers={"Accept": ANY})
    second = http.get(instance_path(parts[0]), headers={"Accept": ANY})
    assert first.content == second.content  # a strong ETag names these exact bytes
    assert first.headers["etag"] == second.headers["etag"]


def test_accept_without_valid_entries_gets_the_default(
    http: httpx.Client, study: dict[str, object]
) -> None:
    parts: list[bytes] = study["parts"]  # type: ignore[assignment]
    response = http.get(instance_path(parts[0]), headers={"Accept": "garbage;;"})
    assert response.status_code == 200
