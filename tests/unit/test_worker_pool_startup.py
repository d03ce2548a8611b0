"""Workers that cannot start: a new pool stops with an error instead of restarting them
forever, and a SIGHUP whose replacements cannot start leaves the old workers serving."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from dicomweb_server.worker_pool import WorkerPool
from tests.e2e.server import free_port
from tests.worker_pools import start_pool

FAILING_APP = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "index unreachable"})
"""

#: Serves 200 until a file named "broken" appears beside it; workers started after that
#: fail their start-up, as after an upgrade that broke the application.
BREAKABLE_APP = """
import os, pathlib
BROKEN = pathlib.Path(__file__).with_name("broken")

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        if BROKEN.exists():
            await send({"type": "lifespan.startup.failed", "message": "broken upgrade"})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.mark.parametrize("target", ["broken_lifespan_app:app", "no_such_module_here:app"])
def test_workers_that_fail_to_start_stop_the_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    (tmp_path / "broken_lifespan_app.py").write_text(FAILING_APP)
    # Spawned workers inherit the parent's import path.
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    config = uvicorn.Config(
        target, host="127.0.0.1", port=free_port(), workers=2, lifespan="on", log_level="error"
    )
    started = time.monotonic()
    status = WorkerPool(config, 2).run()
    assert status == 1
    assert time.monotonic() - started < 60


def _pids(url: str, tries: int = 20) -> set[str]:
    """Worker pids that answered `tries` requests, each on a new connection."""
    return {httpx.get(url, headers={"Connection": "close"}, timeout=10).text for _ in range(tries)}


def test_sighup_with_replacements_that_cannot_start_keeps_the_old_workers(
    tmp_path: Path,
) -> None:
    pool, port = start_pool(tmp_path, "breakable_app", BREAKABLE_APP, 2)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        before: set[str] = set()
        while len(before) < 2 and time.monotonic() < deadline:
            try:
                before |= _pids(url, 4)
            except httpx.HTTPError:
                time.sleep(0.2)
        assert len(before) == 2

        (tmp_path / "broken").touch()
        pool.send_signal(signal.SIGHUP)
        text = ""
        while "keep serving" not in text and time.monotonic() < deadline + 30:
            time.sleep(0.2)
            text = (tmp_path / "pool.log").read_text()
        assert "keep serving" in text

        assert pool.poll() is None
        assert _pids(url) <= before  # the same two workers, nothing refused
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(30) == 0
    finally:
        pool.kill()
        pool.wait()
