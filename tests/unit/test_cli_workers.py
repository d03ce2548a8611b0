"""How `serve --workers N` sizes each worker's imaging pool."""

from __future__ import annotations

import pytest

from dicomweb_server.cli import imaging_threads_per_worker


@pytest.mark.parametrize(
    ("workers", "cores", "threads"),
    [(2, 2, 1), (4, 4, 1), (4, 16, 4), (3, 8, 2), (8, 2, 1), (2, None, 1)],
)
def test_each_worker_gets_its_share_of_the_cores(
    workers: int, cores: int | None, threads: int
) -> None:
    assert imaging_threads_per_worker(workers, cores) == threads
