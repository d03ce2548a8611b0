"""The append-only audit store: one JSON-lines file per UTC day under the audit folder.

Records are appended (``O_APPEND``) and flushed to disk (``fsync``) before the request they
describe is answered. A writer thread takes every record waiting and makes them durable with
one write and one flush, so concurrent requests share the cost (group commit, as the index
does it); each request still waits for its own records, on an event-loop future the writer
settles with one loop wake-up per batch. Several server processes may append
to the same file: each batch is written under an exclusive ``flock``, and a batch that finds
the file ending in a torn line (a crash in the middle of a write) starts on a new line, so a
torn line never swallows the next record. Nothing here ever rewrites or truncates a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

FILE_PREFIX = "audit-"
FILE_SUFFIX = ".jsonl"
#: After a failed write, requests are refused (503) without trying for this long.
RETRY_AFTER_FAILURE = 1.0
_MAX_BATCH_BYTES = 16 * 1024 * 1024

_Job = tuple[Sequence[bytes], asyncio.AbstractEventLoop, asyncio.Future[None]]


class AuditUnavailable(Exception):
    """The audit trail cannot be written; the request must not proceed unaudited."""


def file_name(day: datetime) -> str:
    return f"{FILE_PREFIX}{day:%Y-%m-%d}{FILE_SUFFIX}"


def audit_files(directory: Path) -> list[Path]:
    """The day files in time order (their names sort by date)."""
    if not directory.is_dir():
        return []
    return sorted(
        path
        for path in directory.iterdir()
        if path.name.startswith(FILE_PREFIX) and path.name.endswith(FILE_SUFFIX)
    )


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AuditStore:
    """Durable, append-only record files; `append` returns once the records are on disk."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._fd: int | None = None
        self._day: str | None = None
        self._failed_at: float | None = None
        self._listeners: list[Any] = []
        self._closed = False

    # -- public -------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False shortly after a failed write: requests are then refused without trying."""
        failed = self._failed_at
        return failed is None or time.monotonic() - failed >= RETRY_AFTER_FAILURE

    def on_written(self, callback: Any) -> None:
        """Call ``callback()`` (from the writer) after each durable batch."""
        self._listeners.append(callback)

    async def append(self, lines: Sequence[bytes]) -> None:
        """Append JSON lines (each ending in ``\\n``); returns once they are durable."""
        if not lines:
            return
        if self._closed:
            raise AuditUnavailable("the audit store is closed")
        self._ensure_started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._jobs.put((lines, loop, future))
        await future

    def append_sync(self, lines: Sequence[bytes]) -> None:
        """Append and flush in the calling thread (start-up, shutdown, command line)."""
        if lines:
            self._write(lines)

    def close(self) -> None:
        """Write what is queued, stop the writer and close the file."""
        self._closed = True
        with self._thread_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()
        with self._io_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # -- writer -------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            jobs = [first]
            size = sum(len(line) for line in first[0])
            stop = False
            while size < _MAX_BATCH_BYTES:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                size += sum(len(line) for line in job[0])
            error: BaseException | None = None
            try:
                self._write([line for lines, _, _ in jobs for line in lines])
            except BaseException as exc:  # every waiting request must hear about it
                error = exc
            _answer(jobs, error)
            if stop:
                return

    def _write(self, lines: Sequence[bytes]) -> None:
        data = b"".join(lines)
        with self._io_lock:
            try:
                fd = self._file_for(datetime.now(UTC))
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    end = os.fstat(fd).st_size
                    if end and os.pread(fd, 1, end - 1) != b"\n":
                        data = b"\n" + data  # a torn line from a crash: never continue it
                    view = memoryview(data)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.fsync(fd)
            except OSError as exc:
                self._failed_at = time.monotonic()
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd, self._day = None, None
                log.error("cannot write the audit trail in %s: %s", self.directory, exc)
                raise AuditUnavailable(f"the audit trail cannot be written ({exc})") from exc
            self._failed_at = None
        for callback in self._listeners:
            try:
                callback()
            except Exception:  # a listener must never fail a durable write
                log.exception("audit listener failed")

    def _file_for(self, now: datetime) -> int:
        day = f"{now:%Y-%m-%d}"
        if self._fd is not None and self._day == day:
            return self._fd
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        path = self.directory / file_name(now)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # The new file's name must be durable too, not only its contents.
        _fsync_directory(self.directory)
        self._fd, self._day = fd, day
        return fd


def _answer(jobs: Sequence[_Job], error: BaseException | None) -> None:
    """Settle a batch's futures, waking each event loop once for all its waiters."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for _, loop, future in jobs:
        by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():
        # A closed loop raises RuntimeError: nobody waits for these futures any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle_all, futures, error)


def _settle_all(futures: Sequence[asyncio.Future[None]], error: BaseException | None) -> None:
    # Runs in the waiters' loop; a waiter that was cancelled has a done future.
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


# --- Reading ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which records to list; every given criterion must hold."""

    user: str | None = None
    patient: str | None = None
    study: str | None = None
    event: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if self.user is not None and record.get("user") != self.user:
            return False
        if self.patient is not None and self.patient not in (record.get("patients") or ()):
            return False
        if self.study is not None and self.study not in (record.get("studies") or ()):
            return False
        if self.event is not None and record.get("event") != self.event:
            return False
        if self.since is not None or self.until is not None:
            try:
                when = parse_time(str(record.get("time")))
            except ValueError:
                return False
            if self.since is not None and when < self.since:
                return False
            if self.until is not None and when > self.until:
                return False
        return True

    def as_query(self) -> str:
        """The criteria as ``name=value`` pairs, for the Audit Log Used message."""
        pairs = []
        for name in ("user", "patient", "study", "event", "since", "until"):
            value = getattr(self, name)
            if value is not None:
                pairs.append(f"{name}={value.isoformat() if name in ('since', 'until') else value}")
        return "&".join(pairs)


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or date-time; without a zone it is UTC."""
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _day_of(path: Path) -> datetime | None:
    try:
        day = datetime.strptime(path.name[len(FILE_PREFIX) : -len(FILE_SUFFIX)], "%Y-%m-%d")
    except ValueError:
        return None
    return day.replace(tzinfo=UTC)


def iter_lines(directory: Path, criteria: AuditFilter | None = None) -> Iterator[bytes]:
    """Every complete record line matching ``criteria``, oldest first.

    Files whose day lies outside the time span are not opened (with a day's margin: a record
    made just before midnight may be written just after). Blank, torn and unreadable lines
    are skipped.
    """
    criteria = criteria or AuditFilter()
    for path in audit_files(directory):
        day = _day_of(path)
        if day is not None:
            if criteria.since is not None and day + timedelta(days=2) < criteria.since:
                continue
            if criteria.until is not None and day - timedelta(days=1) > criteria.until:
                continue
        with path.open("rb") as handle:
            for line in handle:
                if not line.endswith(b"\n") or not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    log.warning("skipping an unreadable line in %s", path)
                    continue
                if isinstance(record, dict) and criteria.matches(record):
                    yield line


def read_records(directory: Path, criteria: AuditFilter | None = None) -> list[dict[str, Any]]:
    """Matching records as dictionaries (for tests and tools)."""
    return [orjson.loads(line) for line in iter_lines(directory, criteria)]
