"""The blob store interface.

Blobs are immutable: a stored instance's bytes are written once under a key the archive
chooses (never one derived from request data) and later read whole or by byte range. New
bytes always arrive through a *staging file* on local disk, because ingest has to parse the
file it is storing and a local file is the cheapest thing to parse; committing a staged file
makes it durable in the store.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """A fully written, fsync'd staging file and what was learnt while writing it."""

    path: Path
    sha256: str
    size: int


class StagingWriter:
    """Write one incoming body part to a staging file, hashing it on the way.

    The caller feeds chunks as they arrive from the network, so memory stays bounded by the
    chunk size whatever the size of the part.
    """

    def __init__(self, directory: Path) -> None:
        self._path = directory / f"{secrets.token_hex(16)}.part"
        self._file: BinaryIO = open(self._path, "xb")  # noqa: SIM115 - closed in finish/abort
        self._hash = hashlib.sha256()
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    def write_all(self, chunks: list[bytes]) -> None:
        """Write several chunks in one call (one thread hop for the caller)."""
        for chunk in chunks:
            self._hash.update(chunk)
            self._size += len(chunk)
        self._file.writelines(chunks)

    def finish(self) -> StagedBlob:
        """Flush and fsync: after this the staged bytes survive a crash."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return StagedBlob(self._path, self._hash.hexdigest(), self._size)

    def abort(self) -> None:
        """Drop a part that will not be stored."""
        self._file.close()
        self._path.unlink(missing_ok=True)


def new_blob_key(sha256: str) -> str:
    """A fresh key for one store attempt.

    The random suffix gives every attempt exclusive ownership of its blob: an attempt that
    fails or loses a race deletes only what it wrote, never bytes another attempt relies on.
    """
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}-{secrets.token_hex(4)}"


class BlobStore(ABC):
    """Durable storage of immutable blobs, read whole or by byte range.

    Methods block (file or network I/O); the async layers call them in worker threads.
    """

    def __init__(self, staging_dir: Path) -> None:
        self.staging_dir = staging_dir
        staging_dir.mkdir(parents=True, exist_ok=True)

    def staging_writer(self) -> StagingWriter:
        """Start a new staging file."""
        return StagingWriter(self.staging_dir)

    def clear_staging(self) -> int:
        """Remove staging files left by an earlier process; returns how many.

        Only safe when no ingest is running, i.e. at start-up before serving.
        """
        removed = 0
        for entry in self.staging_dir.iterdir():
            if entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
        return removed

    @abstractmethod
    def commit(self, staged: StagedBlob, key: str) -> None:
        """Make the staged bytes durable under ``key`` and consume the staging file."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a blob; deleting a missing blob is not an error."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes of the blob; raises ``KeyError`` when missing."""

    @abstractmethod
    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``; raises ``KeyError`` when missing."""

    @abstractmethod
    def iter_range(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        """Yield the bytes of a range in chunks, so large blobs stream in bounded memory."""

    @abstractmethod
    def local_path(self, key: str) -> Path | None:
        """A local file holding the blob, when the store has one (lets readers use pread)."""
