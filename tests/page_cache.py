"""Dropping files from the page cache, as memory pressure would: for tests of reads that
must not wait on the disk."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi.testclient import TestClient


def evict(path: Path, offset: int = 0, length: int = 0) -> None:
    """Drop a flushed file's pages (`length` 0: to the end) from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def evict_blobs(client: TestClient) -> None:
    """Drop every blob the client's archive stores from the page cache."""
    root: Path = client.app.state.archive.blobs.root  # type: ignore[attr-defined]
    for path in root.rglob("*"):
        if path.is_file() and ".staging" not in path.parts:
            evict(path)
