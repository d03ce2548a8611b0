"""The archive's Prometheus metrics: what is measured, and how a scrape reads it.

One `ArchiveMetrics` per application. It runs in one of two modes, chosen when it is built:

* **single process** (``create_app`` used directly: tests, embedded use, ``serve`` with one
  worker): values live in this process, in a registry of this object's own, so two
  applications in one process never count into each other;
* **multiprocess** (``serve --workers N``): ``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at
  a fresh directory before the workers start (`prepare_directory`). prometheus_client then
  keeps every value in a memory-mapped file per process in that directory, and a scrape,
  whichever worker answers it, adds up the files of all workers, those that have exited
  included: totals never depend on which worker the load balancer picked.

No label ever holds request data: transactions come from route templates
(`dicomweb_server.metrics.transactions`), status codes and outcomes from fixed sets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from sqlalchemy.exc import DBAPIError
from starlette.types import Scope

from dicomweb_server.errors import StorageError
from dicomweb_server.metrics.multiprocess import ENVIRONMENT_VARIABLE, sweep_dead_processes

log = logging.getLogger(__name__)

#: Latency buckets, 1 ms to 10 s: a cached thumbnail or a QIDO page is milliseconds, a
#: study retrieval or a large STOW request seconds; slower than 10 s is counted in +Inf.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Values of the ``result`` label of ``dicomweb_stow_instances_total``.
STORE_RESULTS = ("stored", "already_present", "failed")


class StoreOutcomeLike(Protocol):
    """What the STOW counters read of a ``services.store.StoreOutcome``."""

    @property
    def stored(self) -> bool: ...

    @property
    def already_present(self) -> bool: ...


def multiprocess_directory() -> Path | None:
    """The shared metrics directory when values live in files, else ``None``.

    prometheus_client decides where values live when it is first imported, from
    ``PROMETHEUS_MULTIPROC_DIR``; a process that imported it before the variable was set
    keeps its values in memory, and reading files would then report nothing.
    """
    path = os.environ.get(ENVIRONMENT_VARIABLE)
    if not path:
        return None
    if not getattr(values.ValueClass, "_multiprocess", False):
        log.warning(
            "%s is set but prometheus_client was imported before it: metrics of this process only",
            ENVIRONMENT_VARIABLE,
        )
        return None
    return Path(path)


def classify_backend_error(exc: BaseException) -> str | None:
    """``"blob_store"``, ``"index"`` or ``None``: which backend an exception reports failing.

    The same classes `api/errors.py` answers with 503: ``OSError`` and `StorageError` from
    the blob store, SQLAlchemy's ``DBAPIError`` from the index.
    """
    if isinstance(exc, DBAPIError):
        return "index"
    if isinstance(exc, StorageError | OSError):
        return "blob_store"
    return None


class ArchiveMetrics:
    """The metrics of one application, and their exposition for ``/metrics``."""

    def __init__(self, directory: Path | None = None) -> None:
        """``directory``: the multiprocess directory (see `multiprocess_directory`); ``None``
        keeps values in memory, in a registry of this object's own."""
        self.directory = directory
        # Multiprocess values are files: the metrics need no registry, and a scrape reads
        # the files of every process through a collector instead.
        own = None if directory is not None else CollectorRegistry()
        self.requests = Counter(
            "dicomweb_http_requests",
            "HTTP requests answered, by DICOMweb transaction and status code.",
            ("transaction", "code"),
            registry=own,
        )
        self.durations = Histogram(
            "dicomweb_http_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its response.",
            ("transaction",),
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.in_flight = Gauge(
            "dicomweb_http_requests_in_flight",
            "Requests being processed now (all workers).",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.stow_bytes = Counter(
            "dicomweb_stow_received_bytes",
            "Bytes of STOW-RS body parts received (part contents, without multipart framing).",
            registry=own,
        )
        self.stow_instances = Counter(
            "dicomweb_stow_instances",
            "STOW-RS parts by result: stored, already present (identical bytes), failed.",
            ("result",),
            registry=own,
        )
        self.blob_store_errors = Counter(
            "dicomweb_blob_store_errors",
            "Requests that failed because the blob store failed (answered 503, or cut off "
            "when the response had started).",
            registry=own,
        )
        self.index_errors = Counter(
            "dicomweb_index_errors",
            "Requests that failed because the index database failed (answered 503, or cut "
            "off when the response had started).",
            registry=own,
        )
        # Children created once: a request then costs dictionary lookups, not label parsing.
        self._stored = {result: self.stow_instances.labels(result) for result in STORE_RESULTS}
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self.registry = own if own is not None else CollectorRegistry()
        if directory is not None:
            MultiProcessCollector(self.registry, path=str(directory))  # type: ignore[no-untyped-call]

    def observe_request(self, transaction: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        children = self._children.get((transaction, status))
        if children is None:
            children = (
                self.requests.labels(transaction, str(status)),
                self.durations.labels(transaction),
            )
            self._children[(transaction, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_stow(self, received: int, outcomes: Iterable[StoreOutcomeLike]) -> None:
        """Count one STOW-RS request's part bytes and the result of each part."""
        if received:
            self.stow_bytes.inc(received)
        counts = dict.fromkeys(STORE_RESULTS, 0)
        for outcome in outcomes:
            if not outcome.stored:
                counts["failed"] += 1
            elif outcome.already_present:
                counts["already_present"] += 1
            else:
                counts["stored"] += 1
        for result, count in counts.items():
            if count:
                self._stored[result].inc(count)

    def observe_backend_error(self, backend: str) -> None:
        """Count one request failed by the blob store (``"blob_store"``) or index."""
        if backend == "index":
            self.index_errors.inc()
        elif backend == "blob_store":
            self.blob_store_errors.inc()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape's body and content type (Prometheus text, or OpenMetrics if asked).

        Blocks (it reads every worker's file in multiprocess mode): call it in a thread.
        """
        if self.directory is not None:
            sweep_dead_processes(self.directory)
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def close(self) -> None:
        """At shutdown: this process's in-flight gauge leaves the totals with it."""
        if self.directory is not None:
            mark_process_dead(os.getpid(), str(self.directory))  # type: ignore[no-untyped-call]


def metrics_of(scope: Scope) -> ArchiveMetrics | None:
    """The application's metrics, if it has them (``DICOMWEB_METRICS``)."""
    state = getattr(scope.get("app"), "state", None)
    found: ArchiveMetrics | None = getattr(state, "metrics", None)
    return found


def count_stow(scope: Scope, received: int, outcomes: Iterable[StoreOutcomeLike]) -> None:
    """STOW-RS reports what one request received and how each part ended."""
    found = metrics_of(scope)
    if found is not None:
        found.observe_stow(received, outcomes)


def count_backend_error(scope: Scope, exc: BaseException) -> None:
    """An error handler reports the blob store or index failure it answers with 503."""
    found = metrics_of(scope)
    backend = classify_backend_error(exc)
    if found is not None and backend is not None:
        found.observe_backend_error(backend)
