"""Side-by-side benchmark: STOW-RS ingest of synthetic 512x512 CT instances.

Starts this archive (embedded default, fresh data folder) and, when Debian's ``orthanc`` and
``orthanc-dicomweb`` are installed, Orthanc with its DICOMweb plugin, both on loopback. Each
scenario runs against both servers in turn with fresh instances, checks a sample of what was
stored, and prints instances/s, MB/s and the server's peak memory, with the ratio to Orthanc.
The machine is shared and noisy: compare ratios within one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ORTHANC = shutil.which("Orthanc")
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
BOUNDARY = "bench-boundary"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


@dataclass
class Server:
    name: str
    root: str
    process: subprocess.Popen[bytes]

    def rss(self) -> int:
        try:
            main = psutil.Process(self.process.pid)
            return main.memory_info().rss + sum(
                child.memory_info().rss for child in main.children(recursive=True)
            )
        except psutil.Error:
            return 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_archive(workdir: Path, workers: int = 1) -> Server:
    port = free_port()
    env = {**os.environ, "DICOMWEB_AUTH": "off"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dicomweb_server.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(workdir / "archive"),
            "--no-access-log",
            "--log-level",
            "warning",
            "--workers",
            str(workers),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_ready(f"http://127.0.0.1:{port}/readyz", process)
    return Server("dicomweb-server", f"http://127.0.0.1:{port}/dicom-web", process)


def start_orthanc(workdir: Path) -> Server | None:
    if not ORTHANC or not Path(ORTHANC_DICOMWEB).exists():
        return None
    port = free_port()
    folder = workdir / "orthanc"
    folder.mkdir()
    config = {
        "Name": "bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [ORTHANC_DICOMWEB],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpThreadsCount": 50,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        [ORTHANC, str(folder / "orthanc.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_ready(f"http://127.0.0.1:{port}/system", process)
    return Server("orthanc", f"http://127.0.0.1:{port}/dicom-web", process)


class Generator:
    """Deterministic 512x512 16-bit CT instances (seeded pixels, fresh UIDs per call)."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.studies = 0
        self.pixels = [
            rng.integers(0, 4096, size=(512, 512), dtype=np.uint16).tobytes() for _ in range(8)
        ]

    def study(self, count: int, per_series: int = 100) -> list[bytes]:
        # One patient per study, as in real data (Orthanc files a study under its patient).
        self.studies += 1
        study = generate_uid()
        series = generate_uid()
        result = []
        for index in range(count):
            if index and index % per_series == 0:
                series = generate_uid()
            result.append(self.instance(study, series, index, self.studies))
        return result

    def instance(self, study: str, series: str, index: int, patient: int = 0) -> bytes:
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.PatientName = f"Bench^Patient{patient}"
        ds.PatientID = f"BENCH{patient}"
        ds.StudyDate = "20240101"
        ds.StudyTime = "120000"
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [0, 0, float(index)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 1.0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PixelData = self.pixels[index % len(self.pixels)]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()


def body_of(instances: list[bytes]) -> bytes:
    pieces = []
    for data in instances:
        pieces += [
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
            data,
            b"\r\n",
        ]
    pieces.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(pieces)


@dataclass
class Result:
    seconds: float
    instances: int
    megabytes: float
    peak_rss: int
    errors: int


def run_stow(server: Server, instances: list[bytes], concurrency: int, per_request: int) -> Result:
    requests = [instances[i : i + per_request] for i in range(0, len(instances), per_request)]
    bodies = [body_of(group) for group in requests]
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "Accept": "application/dicom+json",
    }
    peak = server.rss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.rss())
            time.sleep(0.05)

    local = threading.local()
    errors = 0

    def send(body: bytes) -> None:
        nonlocal errors
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=120)
        response = client.post(f"{server.root}/studies", content=body, headers=headers)
        if response.status_code != 200:
            errors += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, bodies))
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return Result(seconds, len(instances), sum(map(len, instances)) / 1e6, peak, errors)


def verify(server: Server, instances: list[bytes]) -> bool:
    """Fetch a sample back and compare it with what was sent."""
    for data in (instances[0], instances[len(instances) // 2], instances[-1]):
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        url = (
            f"{server.root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
        response = httpx.get(
            url,
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            timeout=60,
        )
        if response.status_code != 200 or data not in response.content:
            return False
    return True


def bench_parse(generator: Generator) -> None:
    """Ingest-time parsing per instance: ours against pydicom's dcmread + to_json_dict."""
    from pydicom.data import get_testdata_file

    from dicomweb_server.dicom.parse import parse_instance

    files = []
    with tempfile.TemporaryDirectory() as temp:
        generated = Path(temp) / "ct512.dcm"
        generated.write_bytes(generator.study(1)[0])
        files.append(("generated CT 512x512", generated))
        for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
            files.append((name, Path(str(get_testdata_file(name)))))

        def best_ms(function, number: int = 200) -> float:  # type: ignore[no-untyped-def]
            timings = []
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(number):
                    function()
                timings.append((time.perf_counter() - start) / number * 1000)
            return min(timings)

        print(
            "Ingest parse, per instance (best of 5): parse_instance does everything ingest needs;"
        )
        print("pydicom = dcmread(stop_before_pixels) + to_json_dict, which is less work.\n")
        print(f"{'file':<24}{'parse_instance ms':>19}{'pydicom ms':>12}{'ratio':>8}")
        for label, path in files:
            ours = best_ms(
                lambda path=path: parse_instance(
                    path, bulk_data_threshold=1024, bulk_uri=lambda *parts: "/bulk"
                )
            )
            theirs = best_ms(
                lambda path=path: pydicom.dcmread(path, stop_before_pixels=True).to_json_dict(
                    1024, lambda element: "/bulk"
                )
            )
            print(f"{label:<24}{ours:>19.3f}{theirs:>12.3f}{theirs / ours:>7.1f}x")
        print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="instances per scenario")
    parser.add_argument("--concurrency", default="1,4,16", help="client concurrencies")
    parser.add_argument("--per-request", type=int, default=1, help="instances per STOW request")
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of our server")
    parser.add_argument("--skip-parse", action="store_true", help="skip the ingest-parse figures")
    parser.add_argument(
        "--scenarios",
        default="stow,frames,metadata,rendered",
        help="comma-separated: stow, frames, metadata, rendered",
    )
    parser.add_argument("--frames", type=int, default=600, help="frames of the multi-frame object")
    parser.add_argument("--frame-concurrency", default="8,32", help="concurrencies for frames")
    parser.add_argument(
        "--seconds", type=float, default=15, help="time budget per pixel scenario and server"
    )
    args = parser.parse_args()
    concurrencies = [int(value) for value in args.concurrency.split(",")]
    scenarios = set(args.scenarios.split(","))

    generator = Generator()
    if not args.skip_parse:
        bench_parse(generator)
    with tempfile.TemporaryDirectory(prefix="dicomweb-bench-") as temp:
        workdir = Path(temp)
        servers = [start_archive(workdir, args.workers)]
        orthanc = None if args.no_orthanc else start_orthanc(workdir)
        if orthanc:
            servers.append(orthanc)
        else:
            print("Orthanc not found (apt-get install orthanc orthanc-dicomweb): ours only\n")
        try:
            if "stow" in scenarios:
                bench_stow(servers, generator, args, concurrencies)
            pixel_scenarios(servers, generator, args, scenarios)
        finally:
            for server in servers:
                server.stop()
    return 0


def pixel_scenarios(
    servers: list[Server], generator: Generator, args: argparse.Namespace, scenarios: set[str]
) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_pixels

    if scenarios & {"frames", "metadata", "rendered"}:
        print("\nPixel data and metadata: requests/s, latency and server memory")
    if "frames" in scenarios:
        concurrencies = [int(value) for value in args.frame_concurrency.split(",")]
        bench_pixels.bench_frames(servers, args.frames, args.seconds, concurrencies)
    if "metadata" in scenarios:
        print()
        bench_pixels.header()
        bench_pixels.bench_metadata(servers, generator.study(300, per_series=300), args.seconds)
    if "rendered" in scenarios:
        print()
        bench_pixels.header()
        bench_pixels.bench_rendered(servers, generator.study(1)[0], args.seconds)


def bench_stow(
    servers: list[Server],
    generator: Generator,
    args: argparse.Namespace,
    concurrencies: list[int],
) -> None:
    """STOW-RS ingest at each client concurrency, fresh instances per server."""
    print(
        f"STOW-RS ingest: {args.count} instances of 512x512x16 bit CT (~0.5 MB), "
        f"{args.per_request} per request; dicomweb-server with {args.workers} worker(s)\n"
    )
    header = (
        f"{'scenario':<16}{'server':<18}{'inst/s':>9}{'MB/s':>9}"
        f"{'peak MB':>10}{'errors':>8}{'ok':>5}"
    )
    print(header)
    print("-" * len(header))
    for concurrency in concurrencies:
        figures: dict[str, Result] = {}
        for server in servers:
            instances = generator.study(args.count)
            result = run_stow(server, instances, concurrency, args.per_request)
            ok = verify(server, instances)
            figures[server.name] = result
            print(
                f"{'STOW c=' + str(concurrency):<16}{server.name:<18}"
                f"{result.instances / result.seconds:>9.1f}"
                f"{result.megabytes / result.seconds:>9.1f}"
                f"{result.peak_rss / 1e6:>10.0f}{result.errors:>8}"
                f"{'yes' if ok else 'NO':>5}"
            )
        if len(figures) == 2:
            ours, theirs = figures["dicomweb-server"], figures["orthanc"]
            ratio = (ours.instances / ours.seconds) / (theirs.instances / theirs.seconds)
            print(f"{'':<16}{'ratio':<18}{ratio:>8.2f}x")


if __name__ == "__main__":
    sys.exit(main())
