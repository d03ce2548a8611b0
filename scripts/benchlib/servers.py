"""Starting, watching and stopping the servers under test, all on loopback.

Three kinds: our archive (``dicomweb-server serve``), Orthanc with Debian's DICOMweb plugin
(a configuration written into the work folder), and the bare-ASGI ceiling
(``scripts/bench_ceiling.py``). A `MemoryMonitor` thread samples the resident memory of each
(the main process and all its children) for the whole run, so peaks between scenarios count
too, and trips a guard that stops the load on a server that grows past its limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from .client import Request, fetch

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
SCRIPTS = Path(__file__).resolve().parents[1]

OURS = "dicomweb-server"
ORTHANC_NAME = "orthanc"
CEILING = "bare-asgi"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A server process under test and where its DICOMweb root is."""

    name: str
    port: int
    prefix: str
    process: subprocess.Popen[bytes]
    log: Path
    host: str = "127.0.0.1"

    def path(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    def rss(self) -> int:
        """Resident memory of the process and all its children, in bytes."""
        try:
            main = psutil.Process(self.process.pid)
            total = int(main.memory_info().rss)
            for child in main.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            return total
        except psutil.Error:
            return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and all its children so far."""
        try:
            main = psutil.Process(self.process.pid)
            processes = [main, *main.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0.0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_ready(server: Server, path: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            if fetch(server.host, server.port, Request("GET", path)).status < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f} s:\n{server.log_tail()}")


def _spawn(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    handle: IO[bytes] = log.open("wb")
    try:
        return subprocess.Popen(
            command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        handle.close()


def start_archive(
    workdir: Path,
    *,
    workers: int,
    name: str = "archive",
    database_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """Our server as deployed: ``dicomweb-server serve`` with its defaults, auth off on loopback.

    Nothing is tuned: the audit trail, group commit and imaging pool run as configured by
    default. `database_url` points the index at PostgreSQL instead of the embedded SQLite;
    `extra_env` adds settings for diagnosis runs (e.g. the audit folder on tmpfs).
    """
    port = free_port()
    env = {**os.environ, "DICOMWEB_AUTH": "off", **(extra_env or {})}
    if database_url:
        env["DICOMWEB_DATABASE_URL"] = database_url
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "dicomweb_server.cli", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(folder),
        "--no-access-log", "--log-level", "warning", "--workers", str(workers),
    ]  # fmt: skip
    server = Server(
        OURS, port, "/dicom-web", _spawn(command, folder / "server.log", env), folder / "server.log"
    )
    _wait_ready(server, "/readyz")
    return server


def orthanc_available() -> bool:
    return Path(ORTHANC).exists() and Path(ORTHANC_DICOMWEB).exists()


def orthanc_config(folder: Path, http_port: int, dicom_port: int) -> dict[str, object]:
    """Orthanc's configuration for the benchmark, with the reason for every deviation.

    Orthanc's own defaults are kept wherever they do not conflict with running side by side:
    the comparison is against Orthanc as people deploy it, not a crippled or special build.
    """
    return {
        "Name": "bench",
        # Storage and SQLite index in the work folder, like our data folder.
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        # Loopback only and no authentication, like our server with DICOMWEB_AUTH=off.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        # The DICOM protocol is not benchmarked; it stays off (a free port in case it matters).
        "DicomServerEnabled": False,
        "DicomPort": dicom_port,
        "Plugins": [ORTHANC_DICOMWEB],
        # Orthanc's defaults, stated so a reader sees them: 50 HTTP threads, keep-alive and
        # TCP_NODELAY on, fsync of stored files (our server fsyncs too: same durability),
        # 128 MB storage cache.
        "HttpThreadsCount": 50,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "SyncStorageArea": True,
        "MaximumStorageCacheSize": 128,
        # The benchmark client never asks for gzip; off so no response is compressed anyway.
        "HttpCompressionEnabled": False,
        # Long requests (a 150 MB series, series metadata read from 300 files) must not be cut.
        "HttpRequestTimeout": 300,
        # Jobs are not used; not persisting them avoids writes unrelated to the scenarios.
        "SaveJobs": False,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "StorageCompression": False,
        "OverwriteInstances": False,
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            # "Full" (the default) answers metadata with every attribute, as ours does;
            # "MainDicomTags" would be faster but incomplete.
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


def start_orthanc(workdir: Path) -> Server:
    """Orthanc with the DICOMweb plugin on a free loopback port, storage in `workdir`."""
    folder = workdir / "orthanc"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = orthanc_config(folder, port, free_port())
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    server = Server(
        ORTHANC_NAME, port, "/dicom-web", _spawn([ORTHANC, str(folder / "orthanc.json")], log), log
    )
    _wait_ready(server, "/system")
    return server


def start_ceiling(
    workdir: Path, manifest: Path | None, *, workers: int, store: Path | None = None
) -> Server:
    """The bare-ASGI ceiling, under the same uvicorn settings as our server: serving the
    manifest's files, or (with `store`) taking STOW-RS requests into that folder."""
    port = free_port()
    log = workdir / ("ceiling.log" if store is None else "ceiling-stow.log")
    command = [
        sys.executable, str(SCRIPTS / "bench_ceiling.py"), "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    if manifest is not None:
        command += ["--manifest", str(manifest)]
    if store is not None:
        command += ["--store-dir", str(store)]
    server = Server(CEILING, port, "/dicom-web", _spawn(command, log), log)
    _wait_ready(server, "/readyz")
    return server


@dataclass
class Watch:
    """Memory of one server over the run and over the current scenario window."""

    server: Server
    limit: int
    peak: int = 0
    window_start: int = 0
    window_peak: int = 0
    tripped: threading.Event = field(default_factory=threading.Event)


class MemoryMonitor:
    """Samples every watched server's RSS every `interval` seconds in a daemon thread.

    A server above its limit sets its `tripped` event, which load runs pass as their stop
    signal: Orthanc, which reads whole files per frame, once took 22 GB on this machine.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.watches: dict[str, Watch] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-monitor", daemon=True)
        self._thread.start()

    def watch(self, server: Server, limit: int) -> Watch:
        rss = server.rss()
        with self._lock:
            watch = Watch(server, limit, rss, rss, rss)
            self.watches[server.name] = watch
        return watch

    def forget(self, name: str) -> None:
        with self._lock:
            self.watches.pop(name, None)

    def begin(self, name: str) -> None:
        """Start a scenario window for `name`: growth is measured from now."""
        with self._lock:
            watch = self.watches.get(name)
            if watch is not None:
                rss = watch.server.rss()
                watch.window_start = watch.window_peak = rss
                watch.peak = max(watch.peak, rss)
                watch.tripped.clear()

    def window(self, name: str) -> tuple[int, int]:
        """RSS at the window's start and its peak since, in bytes."""
        with self._lock:
            watch = self.watches.get(name)
            if watch is None:
                return 0, 0
            rss = watch.server.rss()
            watch.window_peak = max(watch.window_peak, rss)
            return watch.window_start, watch.window_peak

    def peak(self, name: str) -> int:
        with self._lock:
            watch = self.watches.get(name)
            return watch.peak if watch is not None else 0

    def stop_event(self, name: str) -> threading.Event | None:
        watch = self.watches.get(name)
        return watch.tripped if watch is not None else None

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            with self._lock:
                watches = list(self.watches.values())
            for watch in watches:
                rss = watch.server.rss()
                with self._lock:
                    watch.peak = max(watch.peak, rss)
                    watch.window_peak = max(watch.window_peak, rss)
                if rss > watch.limit:
                    watch.tripped.set()
