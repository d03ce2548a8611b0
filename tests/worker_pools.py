"""Worker pools serving small test applications, each pool a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.server import free_port


def start_pool(
    folder: Path, module: str, source: str, workers: int
) -> tuple[subprocess.Popen[bytes], int]:
    """Write `source` as `module` into `folder` and serve its ``app`` with a WorkerPool of
    `workers` on a free port (output in ``folder/pool.log``); the process and the port."""
    (folder / f"{module}.py").write_text(source)
    port = free_port()
    program = (
        "import sys, uvicorn; from dicomweb_server.worker_pool import WorkerPool; "
        f"sys.exit(WorkerPool(uvicorn.Config('{module}:app', host='127.0.0.1', "
        f"port={port}, lifespan='on', log_level='error'), {workers}).run())"
    )
    with (folder / "pool.log").open("wb") as log:
        pool = subprocess.Popen(
            [sys.executable, "-c", program],
            cwd=folder,
            env={**os.environ, "PYTHONPATH": str(folder)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return pool, port
