"""The blob store interface.

Blobs are immutable: a stored instance's bytes are written once under a key the archive
chooses (never one derived from request data) and later read whole or by byte range. New
bytes always arrive through a *staging file* on local disk, because ingest has to parse the
file it is storing and a local file is the cheapest thing to parse; committing a staged file
makes it durable in the store.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

_T = TypeVar("_T")


def _done() -> None:
    """Nothing to wait for."""


class WouldWait(Exception):
    """Answering now would wait on a disk or a network: do it in a worker thread instead."""


class BlobStoreConfigurationError(Exception):
    """The configured blob store cannot be used (no bucket, no access, unreachable).

    Raised at start-up with a message meant for the operator, not as a request failure.
    """


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """A fully written staging file and what was learnt while writing it.

    Its bytes are not yet durable: a staging file is worthless after a crash (staging folders
    are cleared at start-up), so only a store that keeps the file itself makes it durable,
    when committing it (:meth:`BlobStore.start_sync`). Ingest then pays no flush of its own
    before parsing, and a remote store none at all.
    """

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
        """Close the file; making it durable is the store's part of committing it."""
        self._file.close()
        return StagedBlob(self._path, self._hash.hexdigest(), self._size)

    def abort(self) -> None:
        """Drop a part that will not be stored."""
        self._file.close()
        self._path.unlink(missing_ok=True)


#: Blobs of one batch committed side by side (fsyncs or uploads in flight at once).
COMMIT_THREADS = 8

#: The lock file a live process holds in its own staging folder.
LOCK_NAME = ".lock"


def _abandoned(folder: Path) -> bool:
    """Whether no live process holds ``folder``'s staging lock (taking it if so)."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        return True  # a folder without a lock was never claimed, or is being removed
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def new_blob_key(sha256: str, day: date | None = None) -> str:
    """A fresh key for one store attempt: ``YYYY/MM/DD/<sha[:2]>/<sha>-<random>``.

    The random suffix gives every attempt exclusive ownership of its blob: an attempt that
    fails or loses a race deletes only what it wrote, never bytes another attempt relies on.

    The day it was stored (UTC) comes first so that what a day stores stays together. The
    index's B-tree on the key then grows at its end, in pages that stay cached, where keys
    that start with the hash put every store on a random page of an index that outgrows the
    database's cache around a million instances. A filesystem store creates 256 folders a
    day rather than a new pair for nearly every instance of its first hundred thousand (each
    folder an inode to allocate and a directory to flush), and a day's folder is what an
    incremental backup copies. The hash's first byte still spreads one day's files over 256
    folders. Keys stored by earlier versions keep their layout: a key is opaque once stored.
    """
    day = day or datetime.now(UTC).date()
    return f"{day:%Y/%m/%d}/{sha256[:2]}/{sha256}-{secrets.token_hex(4)}"


class BlobStore(ABC):
    """Durable storage of immutable blobs, read whole or by byte range.

    Methods block (file or network I/O); the async layers call them in worker threads.
    """

    def __init__(self, staging_dir: Path) -> None:
        self.staging_dir = staging_dir
        staging_dir.mkdir(parents=True, exist_ok=True)
        self._own_staging = staging_dir
        self._staging_lock: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def claim_staging(self, owner: str) -> None:
        """Stage into a folder of this process's own, locked while the process lives.

        Several processes may share one staging folder (``serve --workers``). Each stages into
        ``<staging>/<owner>`` and holds an exclusive ``flock`` on its lock file; the kernel
        drops the lock when the process dies, however it dies, which is how
        :meth:`clear_staging` in another process tells an abandoned folder from a busy one.
        """
        # Locked under a hidden name first: another process's clear_staging must never see
        # the folder without its lock held.
        claiming = self.staging_dir / f".{owner}"
        claiming.mkdir(parents=True)
        fd = os.open(claiming / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        folder = self.staging_dir / owner
        os.rename(claiming, folder)
        self._own_staging, self._staging_lock = folder, fd

    def release_staging(self) -> None:
        """Give up this process's staging folder at a clean shutdown."""
        folder, fd = self._own_staging, self._staging_lock
        if fd is None:
            return
        self._own_staging, self._staging_lock = self.staging_dir, None
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)

    def staging_writer(self) -> StagingWriter:
        """Start a new staging file."""
        return StagingWriter(self._own_staging)

    def clear_staging(self) -> int:
        """Remove staging files of processes that are gone; returns how many files.

        A folder whose lock can be taken belongs to no live process. Files directly in the
        staging folder come from a version that staged there and ran as one process, which
        the caller (start-up, before serving) has replaced.
        """
        removed = 0
        for entry in self.staging_dir.iterdir():
            if entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
            elif (
                entry.is_dir()
                and not entry.name.startswith(".")
                and entry != self._own_staging
                and _abandoned(entry)
            ):
                removed += sum(1 for path in entry.iterdir() if path.name != LOCK_NAME)
                shutil.rmtree(entry, ignore_errors=True)
        return removed

    def check(self) -> str | None:
        """Why the store cannot take instances now, or ``None``: the readiness question.

        Every store stages on local disk, so the staging folder is checked here; stores with
        a remote side add a cheap round trip to it.
        """
        if not self.staging_dir.is_dir():
            return "blob staging folder missing"
        return None

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(COMMIT_THREADS, thread_name_prefix="blob-commit")
            return self._pool

    def run_all(self, task: Callable[[_T], object], items: Iterable[_T]) -> None:
        """Run ``task`` on every item side by side; raises the first failure after all settled.

        For work that waits on the disk or the network (fsyncs, uploads), so that a batch
        waits about as long as its slowest item rather than the sum of them all.
        """
        items = list(items)
        if len(items) <= 1:
            for item in items:
                task(item)
            return
        futures = [self._executor().submit(task, item) for item in items]
        errors = [future.exception() for future in futures]
        for error in errors:
            if error is not None:
                raise error

    def start_sync(self, staged: Sequence[StagedBlob]) -> Callable[[], None]:
        """Start whatever must happen to staged files before they can be committed.

        Returns a function that waits for it and raises its first failure. The caller runs
        other work meanwhile (the index transaction that records intents), so a flush that
        commit needs costs no time of its own. Nothing here may make a blob visible under a
        key. The default has nothing to do: an upload reads the file, durable or not.
        """
        return _done

    def commit_all(self, items: Sequence[tuple[StagedBlob, str]], *, synced: bool = False) -> None:
        """Commit several staged blobs at once; raises the first failure after all settled.

        ``synced`` says that :meth:`start_sync` already ran for these staging files. Each
        commit waits on the disk or the network (an fsync, an upload), so a batch is
        committed side by side on a few threads rather than one after another.
        """
        self.run_all(lambda item: self.commit(*item), items)

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

    #: Whether :meth:`read_range_now` can ever give bytes (not for object storage).
    reads_now = False

    def read_range_now(self, key: str, offset: int, length: int) -> bytes | None:
        """The whole range if the store has it in memory now, else ``None`` (never waits,
        never answers short: a range past the end is ``None``; a missing key ``KeyError`` or
        ``None``).

        Handing a read to a worker thread and back costs more CPU on a small host than
        reading a cached frame, so the event loop reads itself what needs no waiting, and
        leaves to a thread what would wait on a disk or a network. A store that always
        would (object storage) keeps this default.
        """
        return None

    @abstractmethod
    def local_path(self, key: str) -> Path | None:
        """A local file holding the blob, when the store has one (lets readers use pread)."""
