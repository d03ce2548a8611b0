"""Worker leases: several archive processes sharing one index and one blob store.

A store or delete attempt records the blob keys it may leave behind as *intents* before it
touches the store, and removes them once the index and the store agree. When a process dies
mid-attempt, its intents are how another process finds what to clean up, without scanning
the store. With one process, cleaning up at start-up was enough; with several, on one host or
many, a process starting must not take the intents of one that is still storing.

So every process registers a *lease* in the index and renews it every few seconds. Intents
are owned by the process that wrote them and are resolved by someone else only once the
owner's lease has lapsed, or, on the same host, once its process is known to be gone. The
owner's final commit removes its intents and checks it removed them all; if a lapsed lease
let another process resolve them meanwhile, the commit fails instead of referencing deleted
bytes. Lease times come from each host's clock: hosts must agree within a fraction of the
lease (NTP, which the audit trail's timestamps need anyway).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from dicomweb_server.index import leases, repository
from dicomweb_server.storage import BlobStore

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return secrets.token_hex(16)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True, slots=True)
class Reaped:
    """What one clean-up pass resolved."""

    intents: int
    orphan_blobs: int
    workers: int


def reap(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    lease_seconds: float,
    *,
    now: Callable[[], float] = time.time,
) -> Reaped:
    """Resolve the intents of workers that are gone: delete unreferenced blobs, drop rows.

    Safe to run at any time, from any process, concurrently with stores and deletes.
    """
    hostname = socket.gethostname()
    with sessions.begin() as session:
        cutoff = now() - lease_seconds
        rows = leases.workers(session)
        dead = [
            row.id
            for row in rows
            if row.heartbeat < cutoff
            or (row.hostname == hostname and row.pid != os.getpid() and _process_gone(row.pid))
        ]
        live = [row.id for row in rows if row.id not in dead]
        intents = leases.claim_orphaned_intents(session, live)
        keys = sorted({key for _, key in intents})
        referenced = repository.referenced_keys(session, keys)
        orphans = [key for key in keys if key not in referenced]
        for key in orphans:
            blobs.delete(key)
        leases.remove_intents_by_pk(session, [pk for pk, _ in intents])
        leases.remove_workers(session, dead)
    if intents or dead:
        log.info(
            "resolved %d intents (%d orphan blobs deleted) of %d workers that are gone",
            len(intents),
            len(orphans),
            len(dead),
        )
    return Reaped(len(intents), len(orphans), len(dead))


@dataclass
class WorkerLease:
    """This process's lease: registered at start, renewed by a thread, dropped at shutdown.

    The same thread resolves other workers' leftovers now and then, so a worker that died
    is cleaned up by the survivors without anyone restarting.
    """

    sessions: sessionmaker[Session]
    blobs: BlobStore
    lease_seconds: float
    worker_id: str = field(default_factory=new_worker_id)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def renew_every(self) -> float:
        return self.lease_seconds / 6

    def register(self) -> None:
        with self.sessions.begin() as session:
            leases.register(
                session, self.worker_id, socket.gethostname()[:255], os.getpid(), time.time()
            )

    def start(self) -> None:
        """Keep the lease alive (and reap others' leftovers) until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="worker-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_reap = time.monotonic() + self.lease_seconds / 2
        while not self._stop.wait(self.renew_every):
            try:
                self.renew()
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + self.lease_seconds / 2
                    reap(self.sessions, self.blobs, self.lease_seconds)
            except Exception as exc:  # the index may be away for a while: keep trying
                log.warning("worker lease renewal failed: %s", exc)

    def renew(self) -> None:
        with self.sessions.begin() as session:
            renewed = leases.renew(session, self.worker_id, time.time())
        if not renewed:
            # Judged dead while stalled; its intents may be gone, which its commits detect.
            log.warning("worker lease %s had lapsed; registering again", self.worker_id)
            self.register()

    def stop(self) -> None:
        """Stop renewing and drop the lease (a clean shutdown leaves no intents behind)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            with self.sessions.begin() as session:
                leases.deregister(session, self.worker_id)
        except Exception as exc:
            log.warning("could not drop worker lease %s: %s", self.worker_id, exc)
