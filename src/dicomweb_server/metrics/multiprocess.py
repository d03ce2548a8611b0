"""The directory worker processes share their metrics through (prometheus_client's
multiprocess mode), and its upkeep.

``serve --workers N`` calls `prepare_directory` before any worker starts, so every worker
inherits ``PROMETHEUS_MULTIPROC_DIR``. Each worker writes its values to files named by its
process id; a scrape adds them all up. Two kinds of leftovers need care:

* files of an earlier run would add old counts to new ones: the directory is fresh for each
  run (or, when the operator chose it, emptied at start);
* the in-flight gauge of a worker that died must stop counting: a worker removes its own
  at a clean shutdown, and each scrape removes those of processes that no longer exist
  (`sweep_dead_processes`), since a crashed worker cleans nothing up. Counters of exited
  workers stay: what they counted happened.

prometheus_client is imported lazily here: ``serve`` calls this module before it sets the
variable that prometheus_client reads once, at its first import.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

#: prometheus_client's own switch to multiprocess mode.
ENVIRONMENT_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

#: Files of "live" gauges, which must disappear with their process: gauge_live<mode>_<pid>.db
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def prepare_directory(workers: int, environ: MutableMapping[str, str] | None = None) -> Path | None:
    """Set up the shared metrics directory for a run of ``workers`` processes.

    Returns the directory, or ``None`` when one process keeps its metrics in memory. An
    operator's ``PROMETHEUS_MULTIPROC_DIR`` is used as it is, emptied of earlier runs'
    files; otherwise a fresh private directory is made and removed when this process exits.
    """
    env = os.environ if environ is None else environ
    chosen = env.get(ENVIRONMENT_VARIABLE)
    if chosen:
        path = Path(chosen)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return path
    if workers <= 1:
        return None
    path = Path(tempfile.mkdtemp(prefix="dicomweb-metrics-"))
    env[ENVIRONMENT_VARIABLE] = str(path)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, under another user
    return True


def sweep_dead_processes(directory: Path) -> list[int]:
    """Drop the live gauges of processes that no longer exist; returns their ids."""
    from prometheus_client.multiprocess import mark_process_dead

    dead = set()
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        match = _LIVE_GAUGE_FILE.fullmatch(name)
        if match is not None and int(match.group(1)) != os.getpid():
            pid = int(match.group(1))
            if not _alive(pid):
                dead.add(pid)
    for pid in sorted(dead):
        mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    return sorted(dead)
