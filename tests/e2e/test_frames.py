"""WADO-RS frames end to end (PS3.18 10.4.1.1.3, 8.7.3.3): every bundled pydicom image.

One server per module stores every pydicom test file with Pixel Data that is available
without a download; each file's frames must come back byte-exact as stored, decoded to
Explicit VR Little Endian, and transcoded to the lossless syntaxes the server offers.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels.utils import get_expected_length, pack_bits
from pydicom.uid import UID, generate_uid

from tests.dicom_files import (
    bundled_bytes,
    dataset_from_bytes,
    make_ct,
    multipart,
    split_multipart,
    stow_content_type,
)
from tests.e2e.server import ServerProcess

EXPLICIT_LE = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"
STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
DECODED = 'multipart/related; type="application/octet-stream"'

#: PS3.18 Table 8.7.3-5: the media type of a compressed frame, by transfer syntax.
MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}

#: The lossless targets a frame may be transcoded to: (part media type, default syntax).
LOSSLESS_TARGETS = [
    ("image/jls", JPEG_LS),
    ("image/jp2", JPEG_2000_LOSSLESS),
    ("image/dicom-rle", RLE),
]

#: Ordinary images every lossless target must be offered for (8/16-bit, grey and colour).
MUST_TRANSCODE = {
    "CT_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "SC_rgb_rle.dcm",
}


def _bundled_without_download() -> list[Path]:
    """``get_testdata_files()`` restricted to what is on disk: files pydicom would have to
    download are skipped, never fetched."""
    from pydicom.data import download

    previous = download._SIMULATE_NETWORK_OUTAGE
    download._SIMULATE_NETWORK_OUTAGE = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            names = get_testdata_files()
    finally:
        download._SIMULATE_NETWORK_OUTAGE = previous
    return sorted({Path(name) for name in names if Path(name).is_file()})


def _read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=True)


def _has_pixel_data(path: Path) -> bool:
    try:
        ds = _read(path.read_bytes())
    except Exception:
        return False
    return "PixelData" in ds


ROOT = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]
IMAGES = {str(path.relative_to(ROOT)): path for path in _bundled_without_download()}
IMAGES = {name: path for name, path in IMAGES.items() if _has_pixel_data(path)}


@dataclass
class Entry:
    """One bundled file as sent to the server (UIDs replaced when they collide)."""

    name: str
    data: bytes
    refused: str | None = None

    @property
    def ds(self) -> Dataset:
        return _read(self.data)

    @property
    def path(self) -> str:
        ds = self.ds
        return (
            f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )


def _with_new_uids(data: bytes) -> bytes:
    ds = _read(data)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer)
    return buffer.getvalue()


def post_instance(http: httpx.Client, data: bytes) -> str | None:
    """STOW one instance; ``None`` when stored, else the server's reason for refusing it."""
    response = http.post(
        "/studies",
        content=multipart([data]),
        headers={"Content-Type": stow_content_type(), "Accept": "application/dicom+json"},
    )
    if response.status_code in (200, 202) and "00081199" in response.json():
        return None
    reason = response.headers.get("warning") or response.text[:300]
    return f"{response.status_code}: {reason}"


@pytest.fixture(scope="module")
def corpus(server: ServerProcess) -> dict[str, Entry]:
    """Every bundled image stored once; colliding UIDs replaced by fresh ones."""
    entries: dict[str, Entry] = {}
    seen_instances: set[str] = set()
    series_study: dict[str, str] = {}
    with httpx.Client(base_url=server.root, timeout=60) as http:
        for name, path in IMAGES.items():
            data = path.read_bytes()
            ds = _read(data)
            study = str(ds.get("StudyInstanceUID", ""))
            series = str(ds.get("SeriesInstanceUID", ""))
            sop = str(ds.get("SOPInstanceUID", ""))
            collides = sop in seen_instances or series_study.get(series, study) != study
            # A few files lack Study or Series Instance UID: give them (and duplicates) fresh ones.
            if collides or not (study and series and sop):
                try:
                    data = _with_new_uids(data)
                except Exception as exc:
                    entries[name] = Entry(name, data, f"cannot give it fresh UIDs: {exc}")
                    continue
                ds = _read(data)
            entry = Entry(name, data, post_instance(http, data))
            entries[name] = entry
            if entry.refused is None:
                seen_instances.add(str(ds.SOPInstanceUID))
                series_study[str(ds.SeriesInstanceUID)] = str(ds.StudyInstanceUID)
    stored = [entry for entry in entries.values() if entry.refused is None]
    # The corpus is the point of this module: most of it must be stored.
    assert len(stored) >= 80, {name: e.refused for name, e in entries.items() if e.refused}
    return entries


def stored_entry(corpus: dict[str, Entry], name: str) -> Entry:
    entry = corpus[name]
    if entry.refused is not None:
        pytest.skip(f"{name} is refused at STOW: {entry.refused}")
    return entry


# --- what pydicom says the frames are ---------------------------------------------------


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def is_encapsulated(ds: Dataset) -> bool:
    return UID(ds.file_meta.TransferSyntaxUID).is_encapsulated


def stored_frame(ds: Dataset, index: int) -> bytes:
    """Frame ``index`` (0-based) exactly as stored, as pydicom extracts it."""
    if is_encapsulated(ds):
        extended = None
        if "ExtendedOffsetTable" in ds:
            extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        return get_frame(
            ds.PixelData, index, extended_offsets=extended, number_of_frames=number_of_frames(ds)
        )
    value = bytes(ds.PixelData)
    if int(ds.BitsAllocated) == 1:
        pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
        if pixels % 8 == 0:
            size = pixels // 8
            return value[index * size : (index + 1) * size]
        bits = np.unpackbits(np.frombuffer(value, np.uint8), bitorder="little")
        return np.packbits(bits[index * pixels : (index + 1) * pixels], bitorder="little").tobytes()
    size = get_expected_length(ds, "bytes") // number_of_frames(ds)
    return value[index * size : (index + 1) * size]


def pixel_frame(ds: Dataset, index: int) -> np.ndarray:
    """pydicom's decoded frame ``index``, as ``pixel_array`` gives it (RGB for YBR)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array = ds.pixel_array
    return array[index] if number_of_frames(ds) > 1 else array


def decoded_native_frame(ds: Dataset, index: int) -> bytes:
    """The frame in Explicit VR Little Endian, computed independently of the server."""
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if not is_encapsulated(ds) and syntax != BIG_ENDIAN:
        return stored_frame(ds, index)  # already little endian: nothing to change
    frame = pixel_frame(ds, index)
    if int(ds.BitsAllocated) == 1:
        return pack_bits(frame, pad=False)
    if (
        not is_encapsulated(ds)
        and int(ds.get("SamplesPerPixel", 1)) > 1
        and int(ds.get("PlanarConfiguration", 0)) == 1
    ):
        frame = np.moveaxis(frame, -1, 0)
    return frame.astype(frame.dtype.newbyteorder("<")).tobytes()


def decodable(ds: Dataset) -> str | None:
    try:
        pixel_frame(ds, 0)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def lossy(ds: Dataset) -> bool:
    return (
        str(ds.file_meta.TransferSyntaxUID)
        in {
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.51",
            "1.2.840.10008.1.2.4.81",
            "1.2.840.10008.1.2.4.91",
        }
        or str(ds.get("LossyImageCompression", "00")) == "01"
    )


def decode_codestream(source: Dataset, body: bytes, syntax: str) -> np.ndarray:
    """Decode a transcoded frame with pydicom, described by the source's image attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    samples = int(source.get("SamplesPerPixel", 1))
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        setattr(ds, keyword, source[keyword].value)
    ds.SamplesPerPixel = samples
    ds.PixelRepresentation = int(source.get("PixelRepresentation", 0))
    # Colour is delivered as RGB whatever the source's YBR form (as decompress() does).
    ds.PhotometricInterpretation = "RGB" if samples == 3 else source.PhotometricInterpretation
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.NumberOfFrames = 1
    ds.PixelData = encapsulate([body])
    ds["PixelData"].VR = "OB"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


def frames_of(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    assert response.status_code == 200, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("multipart/related")
    return list(split_multipart(response.content, response.headers["content-type"]))


def frame_lists(count: int) -> list[list[int]]:
    lists = [[1]]
    if count > 1:
        lists.append([count])
        lists.append([1, 3] if count >= 3 else [1, 2])
    return lists


def expected_media_type(ds: Dataset) -> str:
    return MEDIA_TYPES.get(str(ds.file_meta.TransferSyntaxUID), "application/octet-stream")


# --- every bundled image ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_frames_as_stored_are_byte_exact(
    http: httpx.Client, corpus: dict[str, Entry], name: str
) -> None:
    entry = stored_entry(corpus, name)
    ds = entry.ds
    stored_syntax = str(ds.file_meta.TransferSyntaxUID)
    count = number_of_frames(ds)
    for numbers in frame_lists(count):
        listed = ",".join(map(str, numbers))
        response = http.get(f"{entry.path}/frames/{listed}", headers={"Accept": STORED})
        parts = frames_of(response)
        assert f'type="{expected_media_type(ds)}"' in response.headers["content-type"]
        assert len(parts) == len(numbers), listed
        for number, (headers, body) in zip(numbers, parts, strict=True):
            assert headers["content-type"] == (
                f"{expected_media_type(ds)}; transfer-syntax={stored_syntax}"
            ), (listed, headers)
            assert headers["content-location"].endswith(f"{entry.path}/frames/{number}")
            assert body == stored_frame(ds, number - 1), f"frame {number} of {listed}"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_frames_decoded_to_explicit_little_endian(
    http: httpx.Client, corpus: dict[str, Entry], name: str
) -> None:
    entry = stored_entry(corpus, name)
    ds = entry.ds
    native_le = not is_encapsulated(ds) and str(ds.file_meta.TransferSyntaxUID) != BIG_ENDIAN
    if not native_le and (reason := decodable(ds)):
        pytest.skip(f"pydicom cannot decode {name} either: {reason}")
    count = number_of_frames(ds)
    numbers = [1, count] if count > 1 else [1]
    response = http.get(
        f"{entry.path}/frames/{','.join(map(str, numbers))}", headers={"Accept": DECODED}
    )
    parts = frames_of(response)
    assert len(parts) == len(numbers)
    for number, (headers, body) in zip(numbers, parts, strict=True):
        assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        if native_le or not is_encapsulated(ds):
            assert body == decoded_native_frame(ds, number - 1), f"frame {number}"
            continue
        expected = pixel_frame(ds, number - 1)
        little = expected.dtype.newbyteorder("<")
        assert len(body) == expected.size * little.itemsize, f"frame {number}: size"
        delivered = np.frombuffer(body, dtype=little).reshape(expected.shape)
        assert np.array_equal(delivered, expected), f"frame {number}"


@pytest.mark.parametrize(("media", "syntax"), LOSSLESS_TARGETS)
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_frames_transcoded_to_lossless_targets(
    http: httpx.Client, corpus: dict[str, Entry], name: str, media: str, syntax: str
) -> None:
    entry = stored_entry(corpus, name)
    ds = entry.ds
    if reason := decodable(ds):
        pytest.skip(f"pydicom cannot decode {name} either: {reason}")
    response = http.get(
        f"{entry.path}/frames/1", headers={"Accept": f'multipart/related; type="{media}"'}
    )
    if response.status_code == 406 and name not in MUST_TRANSCODE:
        # Not offered for this image: refused before any body, with an explanation.
        assert "transfer-syntax" in response.text
        return
    [(headers, body)] = frames_of(response)
    assert headers["content-type"] == f"{media}; transfer-syntax={syntax}"
    if str(ds.file_meta.TransferSyntaxUID) == syntax:
        assert body == stored_frame(ds, 0)  # already in the target: sent as stored
    delivered = decode_codestream(ds, body, syntax)
    assert np.array_equal(delivered, pixel_frame(ds, 0))


# --- negotiation ------------------------------------------------------------------------


def test_wildcard_accept_decodes_to_explicit_little_endian(
    http: httpx.Client, corpus: dict[str, Entry]
) -> None:
    for name in ("JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm"):
        entry = stored_entry(corpus, name)
        ds = entry.ds
        [(headers, body)] = frames_of(http.get(f"{entry.path}/frames/1", headers={"Accept": "*/*"}))
        assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        expected = pixel_frame(ds, 0)
        assert np.array_equal(
            np.frombuffer(body, expected.dtype.newbyteorder("<")).reshape(expected.shape),
            expected,
        ), name


def test_lossy_target_is_406_before_any_body(http: httpx.Client, corpus: dict[str, Entry]) -> None:
    entry = stored_entry(corpus, "CT_small.dcm")
    for accept in (
        'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50',
        'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.50',
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.3.4',
        "image/png",
    ):
        response = http.get(f"{entry.path}/frames/1", headers={"Accept": accept})
        assert response.status_code == 406, (accept, response.status_code)
        assert not response.headers["content-type"].startswith("multipart/"), accept


def test_q_values_pick_the_stored_bytes(http: httpx.Client, corpus: dict[str, Entry]) -> None:
    accept = (
        'multipart/related; type="image/jp2"; q=0.5, '
        'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    )
    for name, media in (
        ("MR_small_jpeg_ls_lossless.dcm", "image/jls"),
        ("CT_small.dcm", "application/octet-stream"),
        ("SC_rgb_rle_2frame.dcm", "image/dicom-rle"),
    ):
        entry = stored_entry(corpus, name)
        ds = entry.ds
        [(headers, body)] = frames_of(
            http.get(f"{entry.path}/frames/1", headers={"Accept": accept})
        )
        assert headers["content-type"] == (
            f"{media}; transfer-syntax={ds.file_meta.TransferSyntaxUID}"
        ), name
        assert body == stored_frame(ds, 0), name
    # The preferred range wins when it can be satisfied: JPEG 2000 stored, asked first.
    entry = stored_entry(corpus, "MR_small_jp2klossless.dcm")
    reverse = (
        'multipart/related; type="application/octet-stream"; q=0.4, '
        'multipart/related; type="image/jp2"; transfer-syntax=*'
    )
    [(headers, body)] = frames_of(http.get(f"{entry.path}/frames/1", headers={"Accept": reverse}))
    assert headers["content-type"] == f"image/jp2; transfer-syntax={JPEG_2000_LOSSLESS}"
    assert body == stored_frame(entry.ds, 0)


# --- errors -----------------------------------------------------------------------------


def test_frame_numbers_out_of_range_are_404(http: httpx.Client, corpus: dict[str, Entry]) -> None:
    for name in ("CT_small.dcm", "examples_ybr_color.dcm"):
        entry = stored_entry(corpus, name)
        count = number_of_frames(entry.ds)
        # Well-formed numbers past the last frame, however long, are missing frames.
        for frames in ("0", str(count + 1), f"1,{count + 1}", "99999999999999", "9" * 40):
            response = http.get(f"{entry.path}/frames/{frames}", headers={"Accept": STORED})
            assert response.status_code == 404, (name, frames, response.status_code)


def test_malformed_frame_lists_are_400(http: httpx.Client, corpus: dict[str, Entry]) -> None:
    entry = stored_entry(corpus, "CT_small.dcm")
    for frames in ("a", "1,,2", "-1", "1.5", "1,a", "\u0661"):
        response = http.get(f"{entry.path}/frames/{frames}", headers={"Accept": STORED})
        assert response.status_code == 400, (frames, response.status_code)


def test_instance_without_pixel_data_and_unknown_instance_are_404(
    http: httpx.Client, corpus: dict[str, Entry], server: ServerProcess
) -> None:
    report = bundled_bytes("test-SR.dcm")
    ds = dataset_from_bytes(report)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert post_instance(http, buffer.getvalue()) is None
    path = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    for accept in (STORED, DECODED, "application/octet-stream"):
        assert http.get(f"{path}/frames/1", headers={"Accept": accept}).status_code == 404
    entry = stored_entry(corpus, "CT_small.dcm")
    ct = entry.ds
    for unknown in (
        f"/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/{generate_uid()}",
        f"/studies/{generate_uid()}/series/{generate_uid()}/instances/{ct.SOPInstanceUID}",
    ):
        assert http.get(f"{unknown}/frames/1", headers={"Accept": STORED}).status_code == 404


# --- single part ------------------------------------------------------------------------


def test_single_part_octet_stream_for_one_frame(
    http: httpx.Client, corpus: dict[str, Entry]
) -> None:
    entry = stored_entry(corpus, "CT_small.dcm")
    response = http.get(f"{entry.path}/frames/1", headers={"Accept": "application/octet-stream"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/octet-stream")
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"]
    assert response.content == stored_frame(entry.ds, 0)
    multi = stored_entry(corpus, "SC_rgb_rle_2frame.dcm")
    response = http.get(f"{multi.path}/frames/1,2", headers={"Accept": "application/octet-stream"})
    assert response.status_code == 406


# --- generated data: large, slow, and the decompression-bomb guard ----------------------


def _native(frames: np.ndarray, **extra: object) -> bytes:
    count, rows, columns = frames.shape
    return make_ct(
        rows=rows,
        columns=columns,
        frames=count,
        pixel_data=frames.astype("<u2").tobytes(),
        extra=dict(extra),
    )


def test_large_native_multi_frame_frames_are_byte_exact(http: httpx.Client) -> None:
    frames = np.random.default_rng(7).integers(0, 4096, (200, 256, 256), dtype=np.uint16)
    data = _native(frames)
    assert post_instance(http, data) is None
    ds = dataset_from_bytes(data)
    path = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    response = http.get(f"{path}/frames/1,100,200", headers={"Accept": STORED})
    parts = frames_of(response)
    for number, (headers, body) in zip((1, 100, 200), parts, strict=True):
        assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        assert body == frames[number - 1].astype("<u2").tobytes(), number
    single = http.get(f"{path}/frames/100", headers={"Accept": "application/octet-stream"})
    assert single.content == frames[99].astype("<u2").tobytes()
    assert http.get(f"{path}/frames/201", headers={"Accept": STORED}).status_code == 404


def _jpeg2000_multi_frame(count: int = 8, size: int = 256) -> tuple[bytes, np.ndarray]:
    from pydicom.uid import JPEG2000Lossless

    yy, xx = np.mgrid[0:size, 0:size]
    frames = np.stack([((xx * (k + 1) + yy * 3) % 4096) for k in range(count)]).astype(np.uint16)
    ds = dataset_from_bytes(_native(frames))
    ds.compress(JPEG2000Lossless, frames)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue(), frames


def test_slow_transcoding_does_not_block_other_requests(
    server: ServerProcess, http: httpx.Client
) -> None:
    data, frames = _jpeg2000_multi_frame()
    assert post_instance(http, data) is None
    ds = dataset_from_bytes(data)
    path = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    listed = ",".join(str(n) for n in range(1, len(frames) + 1))
    results: dict[str, tuple[int, str, bytes]] = {}
    answering = threading.Barrier(5)

    def slow(key: str, accept: str) -> None:
        # Streamed: once the headers are in, the server is still producing later frames.
        with (
            httpx.Client(base_url=server.root, timeout=120) as client,
            client.stream("GET", f"{path}/frames/{listed}", headers={"Accept": accept}) as response,
        ):
            answering.wait(60)
            body = response.read()
            results[key] = (response.status_code, response.headers["content-type"], body)

    threads = [threading.Thread(target=slow, args=(f"decode{i}", DECODED)) for i in range(3)] + [
        threading.Thread(target=slow, args=("jls", 'multipart/related; type="image/jls"'))
    ]
    for thread in threads:
        thread.start()
    try:
        answering.wait(60)  # every slow response has started
        for _ in range(5):
            found = http.get(
                "/studies",
                params={"StudyInstanceUID": ds.StudyInstanceUID},
                headers={"Accept": "application/dicom+json"},
            )
            assert found.status_code == 200
            [study] = found.json()
            assert study["0020000D"]["Value"] == [ds.StudyInstanceUID]
            assert study["00201208"]["Value"] == [1]  # Number of Study Related Instances
    finally:
        for thread in threads:
            thread.join()
    assert len(results) == len(threads)
    for key, (status, content_type, body) in results.items():
        assert status == 200, (key, body[:300])
        parts = list(split_multipart(body, content_type))
        assert len(parts) == len(frames), key
        for k, (headers, frame) in enumerate(parts):
            if key == "jls":
                assert headers["content-type"] == f"image/jls; transfer-syntax={JPEG_LS}"
                assert np.array_equal(decode_codestream(ds, frame, JPEG_LS), frames[k])
            else:
                assert frame == frames[k].astype("<u2").tobytes(), (key, k)


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that refuses to decode more than 1000 pixel samples at once."""
    process = ServerProcess(
        tmp_path_factory.mktemp("guarded") / "data", env={"DICOMWEB_MAX_RENDER_PIXELS": "1000"}
    )
    process.start()
    yield process
    process.stop()


def test_decompression_bomb_guard(guarded_server: ServerProcess) -> None:
    from pydicom.uid import RLELossless

    native = bundled_bytes("CT_small.dcm")  # 128 x 128
    rle = dataset_from_bytes(native)
    rle.SOPInstanceUID = generate_uid()
    rle.file_meta.MediaStorageSOPInstanceUID = rle.SOPInstanceUID
    rle.compress(RLELossless)
    buffer = io.BytesIO()
    rle.save_as(buffer)
    compressed = buffer.getvalue()
    with httpx.Client(base_url=guarded_server.root, timeout=60) as http:
        for data in (native, compressed):
            assert post_instance(http, data) is None
        native_path = Entry("native", native).path
        rle_path = Entry("rle", compressed).path
        refused = [
            (rle_path + "/frames/1", DECODED),
            (rle_path + "/frames/1", "*/*"),
            (native_path + "/frames/1", 'multipart/related; type="image/jls"'),
            (native_path + "/frames/1", 'multipart/related; type="image/dicom-rle"'),
            (native_path + "/rendered", "image/jpeg"),
            (rle_path + "/rendered", "image/png"),
            (rle_path + "/thumbnail", "image/jpeg"),
        ]
        for url, accept in refused:
            response = http.get(url, headers={"Accept": accept})
            assert response.status_code == 400, (url, accept, response.status_code)
            assert "DICOMWEB_MAX_RENDER_PIXELS" in response.text, response.text
        # As stored, nothing is decoded: the guard does not apply.
        [(_, body)] = frames_of(http.get(rle_path + "/frames/1", headers={"Accept": STORED}))
        assert body == stored_frame(dataset_from_bytes(compressed), 0)
        [(_, body)] = frames_of(http.get(native_path + "/frames/1", headers={"Accept": STORED}))
        assert body == dataset_from_bytes(native).PixelData
