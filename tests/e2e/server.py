"""A real archive server process for end-to-end tests: start, stop, kill, restart."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.ports import free_port

__all__ = ["ServerProcess", "free_port"]


class ServerProcess:
    """``dicomweb-server serve`` in a subprocess, on a free loopback port."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        *,
        scheme: str = "http",
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """``scheme="https"`` and a ``verify`` context that trusts the server's CA poll an
        HTTPS server (one given ``--certfile``/``--keyfile``) for readiness."""
        self.data_dir = data_dir
        self.args = args or []
        self.scheme = scheme
        self.verify = verify
        self.port = free_port()
        # Authentication off unless a test configures it (the loopback-only embedded mode).
        self.env = {**os.environ, "DICOMWEB_AUTH": "off", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"

    @property
    def root(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/dicom-web"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        """Start and wait until ready; a server that never gets ready is killed, not left.

        The timeout is generous because it only matters when something is wrong: on a
        loaded 2-core machine several workers importing at once take tens of seconds.
        """
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dicomweb_server.cli",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--no-access-log",
                "--log-level",
                "warning",
                *self.args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: a kill takes its worker processes down with it.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=1, verify=self.verify)
                if ready.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers run, as in a power cut of the process."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


def store_concurrently(root: str, body: bytes, content_type: str, clients: int) -> list[int]:
    """POST the same STOW body from ``clients`` clients at once; their status codes."""
    from concurrent.futures import ThreadPoolExecutor

    def post(_: int) -> int:
        with httpx.Client(base_url=root, timeout=60) as client:
            response = client.post("/studies", content=body, headers={"Content-Type": content_type})
            return response.status_code

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(post, range(clients)))


def staged_files(data_dir: Path) -> list[Path]:
    """Staging files (not the per-process folders and their locks) left under ``data_dir``."""
    return sorted((data_dir / "blobs" / ".staging").rglob("*.part"))


def blob_keys(data_dir: Path) -> list[str]:
    """Keys of the blobs a filesystem-backed server under ``data_dir`` has stored, sorted."""
    root = data_dir / "blobs"
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and ".staging" not in path.parts
    )
