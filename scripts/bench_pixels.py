"""Pixel-data scenarios of the benchmark: frames, series metadata and rendered images.

Used by ``scripts/bench.py --scenarios frames,metadata,rendered``. Every scenario runs against
each server in turn on the same data, checks a sample of answers for correctness, and reports
requests/s, latency percentiles and the server's memory growth during the scenario.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
STOW_BOUNDARY = "bench-pixels"


@dataclass
class Load:
    """What one load run measured."""

    requests: int
    seconds: float
    latencies: list[float]
    rss_before: int
    rss_peak: int
    errors: int
    wrong: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    @property
    def growth_mb(self) -> float:
        return (self.rss_peak - self.rss_before) / 1e6


def run_load(
    server: Any,
    concurrency: int,
    make_request: Callable[[httpx.Client, int], bool],
    *,
    max_requests: int,
    max_seconds: float,
) -> Load:
    """Send requests from `concurrency` threads until either budget is spent.

    `make_request(client, i)` sends request i and says whether the answer was correct
    (raising counts as an error). The time budget keeps a slow peer from stalling the run.
    """
    rss_before = server.rss()
    peak = rss_before
    done = threading.Event()
    lock = threading.Lock()
    latencies: list[float] = []
    counters = {"next": 0, "errors": 0, "wrong": 0}
    deadline = time.perf_counter() + max_seconds

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.rss())
            time.sleep(0.05)

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while time.perf_counter() < deadline:
                with lock:
                    index = counters["next"]
                    if index >= max_requests:
                        return
                    counters["next"] += 1
                start = time.perf_counter()
                try:
                    ok = make_request(client, index)
                except Exception:
                    with lock:
                        counters["errors"] += 1
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if not ok:
                        counters["wrong"] += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return Load(
        len(latencies), seconds, latencies, rss_before, peak, counters["errors"], counters["wrong"]
    )


# ----------------------------------------------------------------------------------------
# Data


def _base_dataset(study: str, series: str, rows: int, columns: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName = "Bench^Frames"
    ds.PatientID = "BENCHFRAMES"
    ds.StudyDate = "20240101"
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def multiframe_instances(frames: int, rows: int = 512, columns: int = 512) -> dict[str, bytes]:
    """A native and an RLE-encapsulated multi-frame object with the same seeded pixels.

    Each frame is a smooth gradient plus noise, so RLE compresses it like real images rather
    than like random bytes.
    """
    rng = np.random.default_rng(11)
    base = (np.add.outer(np.arange(rows), np.arange(columns)) * 4).astype(np.uint16)
    frame_arrays = [
        (base + rng.integers(0, 8, size=(rows, columns), dtype=np.uint16) + k).astype(np.uint16)
        for k in range(frames)
    ]
    study, series = generate_uid(), generate_uid()
    out: dict[str, bytes] = {}

    native = _base_dataset(study, series, rows, columns)
    native.NumberOfFrames = frames
    native.PixelData = b"".join(frame.tobytes() for frame in frame_arrays)
    out["native"] = _part10(native, ExplicitVRLittleEndian)

    from pydicom.pixels.encoders import RLELosslessEncoder

    encapsulated = _base_dataset(study, series, rows, columns)
    encapsulated.SOPInstanceUID = generate_uid()
    encapsulated.InstanceNumber = 2
    encapsulated.NumberOfFrames = frames
    options = {
        "rows": rows,
        "columns": columns,
        "samples_per_pixel": 1,
        "bits_allocated": 16,
        "bits_stored": 16,
        "pixel_representation": 0,
        "photometric_interpretation": "MONOCHROME2",
        "number_of_frames": 1,
    }
    fragments = [RLELosslessEncoder.encode(frame.tobytes(), **options) for frame in frame_arrays]
    encapsulated.PixelData = encapsulate(fragments, has_bot=True)
    encapsulated["PixelData"].VR = "OB"
    out["rle"] = _part10(encapsulated, RLELossless)
    return out


def _part10(ds: Dataset, syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def store(root: str, instances: list[bytes]) -> None:
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}',
        "Accept": "application/dicom+json",
    }
    for data in instances:
        body = b"".join(
            [
                f"--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                data,
                f"\r\n--{STOW_BOUNDARY}--\r\n".encode(),
            ]
        )
        response = httpx.post(f"{root}/studies", content=body, headers=headers, timeout=600)
        response.raise_for_status()


def instance_url(root: str, data: bytes) -> str:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return (
        f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def expected_frames(data: bytes, count: int) -> Callable[[int], bytes]:
    """Frame k (1-based) as stored, extracted with pydicom, for correctness checks."""
    ds = pydicom.dcmread(io.BytesIO(data))
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        from pydicom.encaps import get_frame

        value = ds.PixelData
        return lambda k: get_frame(value, k - 1, number_of_frames=count)
    size = int(ds.Rows) * int(ds.Columns) * 2
    value = ds.PixelData
    return lambda k: value[(k - 1) * size : k * size]


def first_part(body: bytes) -> bytes:
    """The content of the first part of a multipart body (the boundary is its first line)."""
    boundary = body[: body.index(b"\r\n")]
    start = body.index(b"\r\n\r\n") + 4
    end = body.index(b"\r\n" + boundary, start)
    return body[start:end]


def frames_request(url: str, count: int, expected: Callable[[int], bytes], check_every: int):  # type: ignore[no-untyped-def]
    rng = random.Random(5)
    numbers = [rng.randint(1, count) for _ in range(100_000)]

    def request(client: httpx.Client, index: int) -> bool:
        number = numbers[index % len(numbers)]
        response = client.get(f"{url}/frames/{number}", headers={"Accept": FRAMES_ACCEPT})
        if response.status_code != 200:
            raise RuntimeError(f"status {response.status_code}")
        if index % check_every:
            return True
        return first_part(response.content) == expected(number)

    return request


def summarise(label: str, figures: dict[str, Load], unit: str = "req/s") -> None:
    for name, load in figures.items():
        print(
            f"{label:<30}{name:<18}{load.rate:>10.1f}{load.percentile(0.5):>9.1f}"
            f"{load.percentile(0.99):>9.1f}{load.growth_mb:>9.1f}{load.rss_peak / 1e6:>9.0f}"
            f"{load.errors:>7}{load.wrong:>6}"
        )
    if len(figures) == 2:
        ours, theirs = figures.get("dicomweb-server"), figures.get("orthanc")
        if ours and theirs and theirs.rate:
            print(f"{'':<30}{'ratio':<18}{ours.rate / theirs.rate:>9.1f}x")


def header() -> None:
    line = (
        f"{'scenario':<30}{'server':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'grow MB':>9}{'peak MB':>9}{'errors':>7}{'wrong':>6}"
    )
    print(line)
    print("-" * len(line))


def bench_frames(servers: list[Any], frames: int, seconds: float, concurrencies: list[int]) -> None:
    """Random single frames of a native and an RLE multi-frame object."""
    print(f"\nGenerating a {frames}-frame 512x512 16-bit object, native and RLE ...")
    objects = multiframe_instances(frames)
    print(
        f"native {len(objects['native']) / 1e6:.0f} MB, RLE {len(objects['rle']) / 1e6:.0f} MB;"
        f" each scenario runs for at most {seconds:.0f} s per server\n"
    )
    for server in servers:
        store(server.root, list(objects.values()))
    header()
    for kind in ("native", "rle"):
        expected = expected_frames(objects[kind], frames)
        for concurrency in concurrencies:
            figures: dict[str, Load] = {}
            for server in servers:
                url = instance_url(server.root, objects[kind])
                figures[server.name] = run_load(
                    server,
                    concurrency,
                    frames_request(url, frames, expected, check_every=50),
                    max_requests=20_000,
                    max_seconds=seconds,
                )
            summarise(f"frame {kind} c={concurrency}", figures)


def bench_metadata(servers: list[Any], instances: list[bytes], seconds: float) -> None:
    """Series metadata of one series of `len(instances)` instances."""
    for server in servers:
        for start in range(0, len(instances), 50):
            store_many(server.root, instances[start : start + 50])
    ds = pydicom.dcmread(io.BytesIO(instances[0]), stop_before_pixels=True)
    figures: dict[str, Load] = {}
    for server in servers:
        url = f"{server.root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata"

        def request(client: httpx.Client, index: int, url: str = url) -> bool:
            response = client.get(url, headers={"Accept": "application/dicom+json"})
            if response.status_code != 200:
                raise RuntimeError(f"status {response.status_code}")
            if index % 20:
                return True
            return len(response.json()) == len(instances)

        figures[server.name] = run_load(server, 4, request, max_requests=5_000, max_seconds=seconds)
    summarise(f"series metadata ({len(instances)})", figures)


def bench_rendered(servers: list[Any], instance: bytes, seconds: float) -> None:
    """Rendered JPEG of one 512x512 CT instance."""
    figures: dict[str, Load] = {}
    from PIL import Image

    for server in servers:
        store(server.root, [instance])
        url = instance_url(server.root, instance) + "/rendered"

        def request(client: httpx.Client, index: int, url: str = url) -> bool:
            response = client.get(url, headers={"Accept": "image/jpeg"})
            if response.status_code != 200:
                raise RuntimeError(f"status {response.status_code}")
            if index % 20:
                return True
            return Image.open(io.BytesIO(response.content)).size == (512, 512)

        figures[server.name] = run_load(server, 4, request, max_requests=5_000, max_seconds=seconds)
    summarise("rendered JPEG c=4", figures)


def store_many(root: str, instances: list[bytes]) -> None:
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}',
        "Accept": "application/dicom+json",
    }
    pieces: list[bytes] = []
    for data in instances:
        pieces += [
            f"--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
            data,
            b"\r\n",
        ]
    pieces.append(f"--{STOW_BOUNDARY}--\r\n".encode())
    response = httpx.post(f"{root}/studies", content=b"".join(pieces), headers=headers, timeout=600)
    response.raise_for_status()
