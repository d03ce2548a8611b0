"""RFC 9110 byte ranges end to end: single-part instance, bulk data value and frame.

Range requests apply to single-part representations that are the stored bytes (or a
deterministic function of them): ``application/dicom; transfer-syntax=*`` for an instance,
``application/octet-stream`` for a bulk data value and for one frame.
"""

from __future__ import annotations

import httpx
import numpy as np
import pydicom
import pytest

from tests.dicom_files import (
    bundled_bytes,
    dataset_from_bytes,
    instance_path,
    multipart,
    split_multipart,
    stow_content_type,
    with_new_uids,
)
from tests.e2e.server import ServerProcess

SINGLE_DICOM = "application/dicom; transfer-syntax=*"
OCTETS = "application/octet-stream"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def store(http: httpx.Client, data: bytes) -> None:
    response = http.post(
        "/studies", content=multipart([data]), headers={"Content-Type": stow_content_type()}
    )
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def stored(server: ServerProcess) -> dict[str, bytes]:
    files = {
        "ct": with_new_uids(bundled_bytes("CT_small.dcm")),
        "bigendian": with_new_uids(bundled_bytes("MR_small_bigendian.dcm")),
        "rle2": with_new_uids(bundled_bytes("SC_rgb_rle_2frame.dcm")),
    }
    with httpx.Client(base_url=server.root, timeout=60) as http:
        for data in files.values():
            store(http, data)
    return files


def pixel_bulk_uri(http: httpx.Client, data: bytes) -> str:
    metadata = http.get(
        instance_path(data) + "/metadata", headers={"Accept": "application/dicom+json"}
    )
    assert metadata.status_code == 200
    uri: str = metadata.json()[0]["7FE00010"]["BulkDataURI"]
    return uri


def byteranges(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    assert response.status_code == 206, response.status_code
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/byteranges"), content_type
    assert "content-range" not in response.headers
    assert int(response.headers["content-length"]) == len(response.content)
    return list(split_multipart(response.content, content_type))


def check_ranges(http: httpx.Client, url: str, accept: str, whole: bytes) -> str:
    """The RFC 9110 behaviour every ranged representation shares; returns its ETag."""
    size = len(whole)
    full = http.get(url, headers={"Accept": accept})
    assert full.status_code == 200, full.text
    assert full.headers["accept-ranges"] == "bytes"
    etag = full.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"'), etag  # strong: ranges need one
    assert full.content == whole
    assert int(full.headers["content-length"]) == size
    media_type = full.headers["content-type"]

    def get(**headers: str) -> httpx.Response:
        return http.get(url, headers={"Accept": accept, **headers})

    # First bytes, a middle span, a suffix, an open end, and an end past the last byte.
    for spec, start, end in (
        ("bytes=0-131", 0, 131),
        ("bytes=10-19", 10, 19),
        ("bytes=-10", size - 10, size - 1),
        (f"bytes={size - 5}-", size - 5, size - 1),
        (f"bytes=100-{size + 1000}", 100, size - 1),
        ("BYTES=0-0", 0, 0),
    ):
        response = get(Range=spec)
        assert response.status_code == 206, (spec, response.status_code)
        assert response.headers["content-range"] == f"bytes {start}-{end}/{size}", spec
        assert response.headers["content-type"] == media_type
        assert response.headers["etag"] == etag
        assert int(response.headers["content-length"]) == end - start + 1
        assert response.content == whole[start : end + 1], spec

    # Several ranges: multipart/byteranges, each part with its own Content-Range.
    response = get(Range="bytes=0-9, 20-29, -4")
    parts = byteranges(response)
    expected = [(0, 9), (20, 29), (size - 4, size - 1)]
    assert len(parts) == len(expected)
    for (headers, content), (start, end) in zip(parts, expected, strict=True):
        assert headers["content-type"] == media_type
        assert headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert content == whole[start : end + 1]

    # Unsatisfiable: 416 naming the current length.
    for spec in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}"):
        response = get(Range=spec)
        assert response.status_code == 416, spec
        assert response.headers["content-range"] == f"bytes */{size}"

    # A syntactically invalid Range header is ignored: the whole representation.
    for spec in ("bytes=20-10", "items=0-1", "bytes=abc"):
        response = get(Range=spec)
        assert response.status_code == 200, spec
        assert response.content == whole

    # If-Range: the current strong ETag lets the range apply; anything else gets all of it.
    response = get(Range="bytes=0-3", **{"If-Range": etag})
    assert response.status_code == 206
    assert response.content == whole[:4]
    for validator in ('"not-the-etag"', f"W/{etag}", "Sat, 01 Jan 2000 00:00:00 GMT"):
        response = get(Range="bytes=0-3", **{"If-Range": validator})
        assert response.status_code == 200, validator
        assert response.content == whole

    return etag


def test_single_part_instance_ranges(http: httpx.Client, stored: dict[str, bytes]) -> None:
    data = stored["ct"]
    url = instance_path(data)
    etag = check_ranges(http, url, SINGLE_DICOM, data)
    # The Part 10 preamble and magic, exactly as stored.
    response = http.get(url, headers={"Accept": SINGLE_DICOM, "Range": "bytes=0-131"})
    assert response.content[128:] == b"DICM"
    assert response.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    # The same instance keeps its validator; another instance has another one.
    again = http.get(url, headers={"Accept": SINGLE_DICOM})
    assert again.headers["etag"] == etag
    other = http.get(instance_path(stored["bigendian"]), headers={"Accept": SINGLE_DICOM})
    assert other.headers["etag"] != etag


def test_instance_in_another_syntax_is_not_ranged_bytes_of_the_file(
    http: httpx.Client, stored: dict[str, bytes]
) -> None:
    # Re-encoded for the client: the body is not the stored file, so a range must not be
    # served from the stored file's offsets.
    data = stored["bigendian"]
    response = http.get(
        instance_path(data),
        headers={
            "Accept": f"application/dicom; transfer-syntax={EXPLICIT_LE}",
            "Range": "bytes=0-131",
        },
    )
    assert response.status_code in (200, 206)
    if response.status_code == 206:
        full = http.get(
            instance_path(data),
            headers={"Accept": f"application/dicom; transfer-syntax={EXPLICIT_LE}"},
        )
        assert response.content == full.content[:132]
    else:
        delivered = dataset_from_bytes(response.content)
        assert delivered.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert np.array_equal(delivered.pixel_array, dataset_from_bytes(data).pixel_array)


def test_bulk_data_value_ranges(http: httpx.Client, stored: dict[str, bytes]) -> None:
    data = stored["ct"]
    uri = pixel_bulk_uri(http, data)
    pixel_data = dataset_from_bytes(data).PixelData
    etag = check_ranges(http, uri, OCTETS, pixel_data)
    response = http.get(uri, headers={"Accept": OCTETS})
    assert response.headers["content-type"] == f"{OCTETS}; transfer-syntax={EXPLICIT_LE}"
    frame = http.get(
        instance_path(data) + "/frames/1", headers={"Accept": OCTETS, "If-None-Match": etag}
    )
    assert frame.status_code == 200  # a frame is another representation, another validator


def test_single_frame_ranges(http: httpx.Client, stored: dict[str, bytes]) -> None:
    data = stored["ct"]
    check_ranges(
        http, instance_path(data) + "/frames/1", OCTETS, dataset_from_bytes(data).PixelData
    )


def test_single_stored_compressed_frame_ranges(
    http: httpx.Client, stored: dict[str, bytes]
) -> None:
    rle = stored["rle2"]
    ds = dataset_from_bytes(rle)
    frame2 = pydicom.encaps.get_frame(ds.PixelData, 1, number_of_frames=2)
    url = instance_path(rle) + "/frames/2"
    # A stored RLE frame as a single part, asked for by its own media type.
    accept = "image/dicom-rle; transfer-syntax=*"
    response = http.get(url, headers={"Accept": accept})
    assert response.status_code == 200, response.text
    assert (
        response.headers["content-type"] == "image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"
    )
    assert response.content == frame2
    check_ranges(http, url, accept, frame2)
    frame1 = http.get(instance_path(rle) + "/frames/1", headers={"Accept": accept})
    assert frame1.content == pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=2)
    assert frame1.headers["etag"] != response.headers["etag"]


@pytest.mark.parametrize("kind", ["instance", "bulk", "frame"])
def test_if_none_match_is_304(http: httpx.Client, stored: dict[str, bytes], kind: str) -> None:
    data = stored["ct"]
    url, accept = {
        "instance": (instance_path(data), SINGLE_DICOM),
        "bulk": (pixel_bulk_uri(http, data), OCTETS),
        "frame": (instance_path(data) + "/frames/1", OCTETS),
    }[kind]
    etag = http.get(url, headers={"Accept": accept}).headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = http.get(url, headers={"Accept": accept, "If-None-Match": header})
        assert response.status_code == 304, (header, response.status_code)
        assert response.content == b""
        assert response.headers["etag"] == etag
    response = http.get(url, headers={"Accept": accept, "If-None-Match": '"something-else"'})
    assert response.status_code == 200
    # A conditional range request whose validator still matches is also 304 (RFC 9110 13.2.2).
    response = http.get(
        url, headers={"Accept": accept, "If-None-Match": etag, "Range": "bytes=0-3"}
    )
    assert response.status_code == 304


def test_big_endian_bulk_pixel_data_ranges_are_little_endian(
    http: httpx.Client, stored: dict[str, bytes]
) -> None:
    data = stored["bigendian"]
    uri = pixel_bulk_uri(http, data)
    little = dataset_from_bytes(data).pixel_array.astype("<i2").tobytes()
    full = http.get(uri, headers={"Accept": OCTETS})
    assert full.status_code == 200
    assert full.headers["content-type"] == f"{OCTETS}; transfer-syntax={EXPLICIT_LE}"
    assert full.content == little
    # Ranges starting and ending inside a 16-bit word are cut from the swapped bytes.
    for start, end in ((0, 99), (11, 20), (1, 1), (len(little) - 3, len(little) - 1)):
        response = http.get(uri, headers={"Accept": OCTETS, "Range": f"bytes={start}-{end}"})
        assert response.status_code == 206, (start, end)
        assert response.content == little[start : end + 1], (start, end)
    parts = byteranges(http.get(uri, headers={"Accept": OCTETS, "Range": "bytes=1-2,7-12"}))
    assert [content for _, content in parts] == [little[1:3], little[7:13]]
