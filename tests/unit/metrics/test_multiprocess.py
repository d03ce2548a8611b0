"""The shared metrics directory of ``serve --workers N``: set up fresh, swept of dead
workers' live gauges."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from dicomweb_server.metrics.multiprocess import (
    ENVIRONMENT_VARIABLE,
    prepare_directory,
    sweep_dead_processes,
)


def test_one_worker_needs_no_directory() -> None:
    environ: dict[str, str] = {}
    assert prepare_directory(1, environ) is None
    assert environ == {}


def test_several_workers_get_a_fresh_private_directory() -> None:
    environ: dict[str, str] = {}
    first = prepare_directory(2, environ)
    assert first is not None
    try:
        assert environ[ENVIRONMENT_VARIABLE] == str(first)
        assert first.is_dir() and not any(first.iterdir())
        assert (first.stat().st_mode & 0o077) == 0  # other users cannot read or plant files
        second = prepare_directory(2, {})
        assert second is not None and second != first
        shutil.rmtree(second)
    finally:
        shutil.rmtree(first)


def test_an_operators_directory_is_emptied_of_earlier_runs(tmp_path: Path) -> None:
    chosen = tmp_path / "metrics"
    chosen.mkdir()
    (chosen / "counter_123.db").write_bytes(b"old")
    (chosen / "histogram_456.db").write_bytes(b"old")
    (chosen / "README").write_text("not ours")
    environ = {ENVIRONMENT_VARIABLE: str(chosen)}
    # Also with one worker: the operator asked for files, so old ones must not count.
    assert prepare_directory(1, environ) == chosen
    assert sorted(path.name for path in chosen.iterdir()) == ["README"]
    assert environ == {ENVIRONMENT_VARIABLE: str(chosen)}


def test_sweep_removes_only_live_gauges_of_dead_processes(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(finished.stdout)
    alive = os.getpid()
    names = [
        f"gauge_livesum_{dead}.db",
        f"gauge_liveall_{dead}.db",
        f"counter_{dead}.db",
        f"histogram_{dead}.db",
        f"gauge_all_{dead}.db",
        f"gauge_livesum_{alive}.db",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert sweep_dead_processes(tmp_path) == [dead]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [
            f"counter_{dead}.db",  # what a dead worker counted still happened
            f"histogram_{dead}.db",
            f"gauge_all_{dead}.db",
            f"gauge_livesum_{alive}.db",
        ]
    )
    assert sweep_dead_processes(tmp_path / "missing") == []
