"""The dicomweb-server command line."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from dicomweb_server import __version__
from tests.dicom_files import bundled_path, make_ct, multipart, stow_content_type
from tests.e2e.server import ServerProcess


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomweb_server.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"dicomweb-server {__version__}"


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    result = run("db", "upgrade", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "data" / "index.sqlite") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"studies", "series", "instances", "blob_intents", "alembic_version"} <= tables
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_import_folder_summary_and_exit_codes(tmp_path: Path) -> None:
    source = tmp_path / "in"
    (source / "nested" / "deeper").mkdir(parents=True)
    names = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtdose.dcm"]
    for name in names:
        shutil.copy(bundled_path(name), source / "nested" / name)
    (source / "deeper.dcm").write_bytes(make_ct())
    (source / "nested" / "deeper" / "README.txt").write_text("not DICOM")
    data = tmp_path / "data"
    first = run("import", str(source), "--data-dir", str(data))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "stored 5, already present 0, rejected 0, skipped (not DICOM) 1" in first.stdout
    assert "file" in first.stderr  # the progress bar
    again = run("import", str(source), "--data-dir", str(data), "--quiet")
    assert "stored 0, already present 5, rejected 0" in again.stdout
    assert again.returncode == 0

    bad = tmp_path / "bad"
    bad.mkdir()
    truncated = make_ct()[:400]
    (bad / "truncated.dcm").write_bytes(truncated)
    result = run(
        "import", str(bad), str(bundled_path("MR_small.dcm")), "--data-dir", str(data), "--quiet"
    )
    assert result.returncode == 1
    assert "rejected 1" in result.stdout
    assert "truncated.dcm: 0xC000" in result.stdout


def test_import_missing_path(tmp_path: Path) -> None:
    result = run("import", str(tmp_path / "nope"), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2
    assert "no such file or folder" in result.stderr


def test_serve_with_two_workers(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", args=["--workers", "2"])
    server.start()
    try:
        parts = [[make_ct(instance_number=n) for n in range(3)] for _ in range(12)]

        def store(group: list[bytes]) -> int:
            with httpx.Client(base_url=server.root, timeout=60) as http:
                return http.post(
                    "/studies",
                    content=multipart(group),
                    headers={"Content-Type": stow_content_type()},
                ).status_code

        with ThreadPoolExecutor(6) as pool:
            assert set(pool.map(store, parts)) == {200}
        with httpx.Client(base_url=server.root) as http:
            found = http.get("/instances", params={"limit": 100})
        assert len(found.json()) == 36
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
        workers = psutil.Process(server.process.pid).children(recursive=True)  # type: ignore[union-attr]
        assert len([p for p in workers if "python" in p.name().lower()]) >= 2
    finally:
        server.stop()


def test_two_workers_recover_before_serving_from_a_lean_supervisor(tmp_path: Path) -> None:
    """With several workers the start-up recovery runs in a child process: it still removes
    what an interrupted run left, and the supervisor never loads the archive's libraries."""
    server = ServerProcess(tmp_path / "data", args=["--workers", "2"])
    server.start()
    server.stop()
    abandoned = server.data_dir / "blobs" / ".staging" / "worker-that-died"
    abandoned.mkdir(parents=True)
    (abandoned / "half-written.part").write_bytes(b"\0" * 100)
    server.start()
    try:
        assert not abandoned.exists()
        assert "recovered from an interrupted run: removed 1 staging files" in server.log()
        supervisor = server.process.pid  # type: ignore[union-attr]
        mapped = Path(f"/proc/{supervisor}/maps").read_text()
        assert "_multiarray_umath" not in mapped  # numpy, imported with pydicom
        assert "sqlalchemy" not in mapped
        workers = psutil.Process(supervisor).children()
        served = [p for p in workers if "spawn_main" in " ".join(p.cmdline())]
        assert len(served) == 2

        def archive_loaded(worker: psutil.Process) -> bool:
            return "_multiarray_umath" in Path(f"/proc/{worker.pid}/maps").read_text()

        # Ready means one worker answers; the other may still be importing on a busy host.
        deadline = time.monotonic() + 60
        while not all(archive_loaded(p) for p in served) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(archive_loaded(p) for p in served)
    finally:
        server.stop()
