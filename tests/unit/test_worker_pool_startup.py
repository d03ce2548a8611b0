"""A pool whose workers cannot start stops with an error instead of restarting them forever."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
import uvicorn

from dicomweb_server.worker_pool import WorkerPool

FAILING_APP = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "index unreachable"})
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("target", ["broken_lifespan_app:app", "no_such_module_here:app"])
def test_workers_that_fail_to_start_stop_the_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    (tmp_path / "broken_lifespan_app.py").write_text(FAILING_APP)
    # Spawned workers inherit the parent's import path.
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    config = uvicorn.Config(
        target, host="127.0.0.1", port=_free_port(), workers=2, lifespan="on", log_level="error"
    )
    started = time.monotonic()
    status = WorkerPool(config, 2).run()
    assert status == 1
    assert time.monotonic() - started < 60
