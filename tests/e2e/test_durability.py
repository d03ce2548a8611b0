"""Durability: SIGKILL during concurrent STOW loses nothing acknowledged and leaves no debris;
large requests stream in bounded memory."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from tests.dicom_files import (
    dataset_from_bytes,
    make_ct,
    multipart,
    split_multipart,
    stow_content_type,
)
from tests.e2e.server import ServerProcess, staged_files

ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _blob_files(data_dir: Path) -> list[Path]:
    root = data_dir / "blobs"
    return [path for path in root.rglob("*") if path.is_file() and ".staging" not in path.parts]


def _store_until_killed(server: ServerProcess, acks: int, delay: float) -> dict[str, bytes]:
    """Six clients store 3-instance studies until the server is SIGKILLed, ``delay`` seconds
    after at least ``acks`` instances were acknowledged (counting acknowledgements rather than
    seconds keeps the test meaningful on a loaded machine); returns every instance whose
    acknowledgement reached its client."""
    acknowledged: dict[str, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.root, timeout=30) as http:
            while not stop.is_set():
                parts = [make_ct(rows=128, columns=128, instance_number=n) for n in range(3)]
                try:
                    response = http.post(
                        "/studies",
                        content=multipart(parts),
                        headers={"Content-Type": stow_content_type()},
                    )
                except httpx.HTTPError:
                    return  # the server died mid-request: nothing of it was acknowledged
                if response.status_code != 200:
                    return
                stored = {
                    item["00081155"]["Value"][0] for item in response.json()["00081199"]["Value"]
                }
                with lock:
                    for part in parts:
                        uid = dataset_from_bytes(part).SOPInstanceUID
                        if uid in stored:
                            acknowledged[uid] = part

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with lock:
            if len(acknowledged) >= acks:
                break
        time.sleep(0.02)
    time.sleep(delay)
    server.kill()
    stop.set()
    for thread in threads:
        thread.join()
    return acknowledged


def _check_intact(server: ServerProcess, acknowledged: dict[str, bytes]) -> None:
    with httpx.Client(base_url=server.root, timeout=30) as http:
        for uid, data in acknowledged.items():
            ds = dataset_from_bytes(data)
            response = http.get(
                f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{uid}",
                headers={"Accept": ANY},
            )
            assert response.status_code == 200, uid
            [(_, content)] = list(
                split_multipart(response.content, response.headers["content-type"])
            )
            assert content == data
    assert staged_files(server.data_dir) == []
    # Every blob is complete (its name carries its hash) and referenced by exactly one row.
    blobs = _blob_files(server.data_dir)
    for path in blobs:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name.split("-")[0]
    with sqlite3.connect(server.data_dir / "index.sqlite") as db:
        keys = sorted(row[0] for row in db.execute("SELECT blob_key FROM instances"))
        intents = db.execute("SELECT count(*) FROM blob_intents").fetchone()[0]
    assert sorted(str(p.relative_to(server.data_dir / "blobs")) for p in blobs) == keys
    assert intents == 0
    assert len(keys) >= len(acknowledged)


def test_sigkill_during_concurrent_stow(tmp_path: Path) -> None:
    """Killed at several different moments, the archive restarts with every acknowledged
    instance intact, nothing half-written visible and no orphan left."""
    server = ServerProcess(tmp_path / "data")
    acknowledged: dict[str, bytes] = {}
    try:
        server.start()
        for acks, delay in ((9, 0.0), (12, 0.37), (15, 0.81)):
            acknowledged.update(_store_until_killed(server, acks, delay))
            server.start()  # start-up recovery runs here
            _check_intact(server, acknowledged)
            # The next round stores into the recovered server: each kill meets the state the
            # previous recovery left behind.
        assert len(acknowledged) > 30, "the load did not get going before the kills"
    finally:
        server.stop()


def _large_instance(size: int) -> bytes:
    side = int((size // 2) ** 0.5)
    return make_ct(rows=side, columns=side, pixel_data=bytes(side * side * 2))


def test_one_gigabyte_request_streams_in_bounded_memory(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.start()
    try:
        process = psutil.Process(server.process.pid)  # type: ignore[union-attr]
        baseline = process.memory_info().rss
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.02)

        count, size = 8, 128 * 1024 * 1024
        boundary = "big-body-boundary"

        def body() -> Iterator[bytes]:
            for _ in range(count):
                yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                data = _large_instance(size)
                for start in range(0, len(data), 1 << 20):
                    yield data[start : start + (1 << 20)]
                yield b"\r\n"
            yield f"--{boundary}--\r\n".encode()

        sampler = threading.Thread(target=sample)
        sampler.start()
        with httpx.Client(base_url=server.root, timeout=300) as http:
            response = http.post(
                "/studies", content=body(), headers={"Content-Type": stow_content_type(boundary)}
            )
        done.set()
        sampler.join()
        assert response.status_code == 200, response.text
        assert len(response.json()["00081199"]["Value"]) == count
        growth = (peak - baseline) / 1024 / 1024
        print(f"\nserver memory growth for a 1 GB STOW request: {growth:.1f} MB")
        assert growth < 100, f"server memory grew by {growth:.0f} MB for a 1 GB request"
    finally:
        server.stop()
