"""In-memory twin of the blob store, for tests of code above the storage layer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dicomweb_server.storage.base import BlobStore, StagedBlob


class MemoryBlobStore(BlobStore):
    """Keeps blobs in a dict; staging still uses local files, as every store does."""

    reads_now = True

    def __init__(self, staging_dir: Path) -> None:
        super().__init__(staging_dir)
        self.blobs: dict[str, bytes] = {}

    def commit(self, staged: StagedBlob, key: str) -> None:
        self.blobs[key] = staged.path.read_bytes()
        staged.path.unlink()

    def delete(self, key: str) -> None:
        self.blobs.pop(key, None)

    def exists(self, key: str) -> bool:
        return key in self.blobs

    def size(self, key: str) -> int:
        return len(self.blobs[key])

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        return self.blobs[key][offset : offset + length]

    def read_range_now(self, key: str, offset: int, length: int) -> bytes | None:
        data = self.read_range(key, offset, length)  # always in memory
        return data if len(data) == length else None

    def iter_range(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        data = self.blobs[key]
        end = len(data) if length is None else min(len(data), offset + length)
        for start in range(offset, end, chunk_size):
            yield data[start : min(end, start + chunk_size)]

    def local_path(self, key: str) -> Path | None:
        return None
