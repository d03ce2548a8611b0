"""Group commit: concurrent store requests share one commit cycle.

Every commit cycle costs two index transactions (each a synchronous disk flush), a rename and
a directory flush per blob, and on SQLite the single write lock. Committing each request's
parts on their own makes concurrent requests queue for the lock one after another; one
committer thread that takes whatever parts are waiting and commits them together lets the
flushes and the lock serve many requests at once, which is what makes ingest scale with
client concurrency. A request still gets its answer only after its own parts are durable.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future

from sqlalchemy import Connection

from dicomweb_server.futures import settle
from dicomweb_server.services.archive import Archive
from dicomweb_server.services.store import PreparedPart, commit_batch

log = logging.getLogger(__name__)

_Job = tuple[Sequence[PreparedPart], Future[None]]


class GroupCommitter:
    """A committer thread fed by a queue; :meth:`commit` awaits a request's own parts."""

    def __init__(self, archive: Archive, max_parts: int = 128) -> None:
        self._archive = archive
        self._max_parts = max_parts
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._thread.start()

    async def commit(self, parts: Sequence[PreparedPart]) -> None:
        """Commit ``parts`` (with whatever else is waiting); returns once they are durable."""
        if not parts:
            return
        self._ensure_started()
        future: Future[None] = Future()
        self._jobs.put((parts, future))
        await asyncio.wrap_future(future)

    def _run(self) -> None:
        # The committer is this process's only writer: one connection serves every cycle.
        connection: Connection | None = None
        while True:
            first = self._jobs.get()
            if first is None:
                if connection is not None:
                    connection.close()
                return
            jobs = [first]
            count = len(first[0])
            while count < self._max_parts:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)
                    break
                jobs.append(job)
                count += len(job[0])
            parts = [part for job_parts, _ in jobs for part in job_parts]
            try:
                if connection is None:
                    connection = self._archive.write_engine.connect()
                commit_batch(self._archive, parts, connection)
            except BaseException as exc:  # every waiting request must hear about it
                log.error("group commit of %d parts failed: %s", len(parts), exc)
                if connection is not None:
                    # The connection may be what failed: start afresh next cycle.
                    connection.invalidate()
                    connection.close()
                    connection = None
                for _, future in jobs:
                    settle(future, exc)
                continue
            for _, future in jobs:
                settle(future, None)

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()
