"""Fresh planner statistics, and a vacuumed intents table, on PostgreSQL when its autovacuum
is off.

PostgreSQL chooses every QIDO plan from the statistics ANALYZE gathers; autovacuum refreshes
them as tables grow. Where autovacuum is off (some managed or hand-tuned servers), an index
that grew from empty to a million instances is still planned as if it were empty: measured
here, every study search on such an index took 1.3 s instead of a few milliseconds, because
the planner chose sequential scans. This archive then analyzes its own tables whenever the
rows stored since the last ANALYZE reach a tenth of the table (at least ``min_rows``), the
rule autovacuum applies by default, in a background thread that stores never wait for.

Vacuuming the archive's tables is left to the administrator, whom the start-up log tells, with
one exception: ``blob_intents`` is a queue that every stored instance adds a row to and removes
it from again. Never vacuumed, it grows by about 330 MB per million instances of rows nobody
can see, which every scan of it (the lease reaper's, every 30 s) reads; so the keeper vacuums
it (and the lease table, updated every few seconds) after every ``vacuum_every`` stores.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

#: The tables QIDO plans read; ANALYZE samples a bounded number of rows of each.
TABLES = ("studies", "series", "series_requests", "instances")
#: Tables whose rows are all short-lived (each store adds and removes an intent; each lease
#: renewal replaces a worker row): vacuumed by the keeper.
CHURNED_TABLES = ("blob_intents", "workers")

_MODIFIED = text(
    "SELECT coalesce(sum(n_mod_since_analyze), 0), coalesce(sum(n_live_tup), 0) "
    "FROM pg_stat_user_tables WHERE relname = ANY(:tables) AND schemaname = current_schema()"
)


class PlannerStatistics:
    """Counts stored rows and runs ANALYZE when autovacuum would have."""

    def __init__(
        self,
        engine: Engine,
        *,
        min_rows: int = 10_000,
        fraction: float = 0.1,
        vacuum_every: int = 20_000,
    ) -> None:
        self._engine = engine
        self._min_rows = min_rows
        self._fraction = fraction
        self._vacuum_every = vacuum_every
        self._lock = threading.Lock()
        self._pending = 0
        self._churned = 0
        self._analyzed_rows = 0
        self._running: threading.Thread | None = None
        self.runs = 0  # completed ANALYZE runs, for tests and logs
        self.vacuums = 0  # completed VACUUM runs of the churned tables

    @classmethod
    def for_engine(
        cls, engine: Engine, *, min_rows: int = 10_000, fraction: float = 0.1
    ) -> PlannerStatistics | None:
        """A keeper when ``engine`` is PostgreSQL with autovacuum off, else None."""
        if engine.dialect.name != "postgresql":
            return None
        with engine.connect() as connection:
            if connection.scalar(text("SELECT current_setting('autovacuum')")) == "on":
                return None
            modified, live = connection.execute(_MODIFIED, {"tables": list(TABLES)}).one()
        log.warning(
            "PostgreSQL autovacuum is off: this archive keeps the planner statistics of its "
            "tables and vacuums its intents queue itself, but nothing vacuums the other "
            "tables; turn autovacuum on"
        )
        keeper = cls(engine, min_rows=min_rows, fraction=fraction)
        keeper._analyzed_rows = max(int(live) - int(modified), 0)
        keeper.stored(int(modified))  # rows left unanalyzed by earlier runs
        return keeper

    def stored(self, rows: int) -> None:
        """Note ``rows`` new index rows (each also added and removed an intent); starts
        ANALYZE, or VACUUM of the churned tables, in the background when due."""
        with self._lock:
            self._pending += rows
            self._churned += rows
            analyze = self._pending >= max(self._min_rows, self._fraction * self._analyzed_rows)
            vacuum = self._churned >= self._vacuum_every
            if not (analyze or vacuum) or self._running is not None:
                return
            pending = churned = 0
            if analyze:
                pending, self._pending = self._pending, 0
            if vacuum:
                churned, self._churned = self._churned, 0
            self._running = threading.Thread(
                target=self._maintain, args=(pending, churned), name="analyze", daemon=True
            )
            self._running.start()

    def _maintain(self, pending: int, churned: int) -> None:
        try:
            with self._engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            ) as connection:
                if churned:
                    self._vacuum(connection, churned)
                if pending:
                    self._analyze(connection, pending)
        except Exception as exc:  # no connection: try again after the next stores
            log.warning("could not reach the index to maintain it: %s", exc)
            with self._lock:
                self._pending += pending
                self._churned += churned
        finally:
            with self._lock:
                self._running = None

    def _vacuum(self, connection: Connection, churned: int) -> None:
        try:
            connection.exec_driver_sql(f"VACUUM {', '.join(CHURNED_TABLES)}")
            with self._lock:
                self.vacuums += 1
        except Exception as exc:  # housekeeping: never fail a store
            log.warning("could not VACUUM %s: %s", ", ".join(CHURNED_TABLES), exc)
            with self._lock:
                self._churned += churned

    def _analyze(self, connection: Connection, pending: int) -> None:
        try:
            connection.exec_driver_sql(f"ANALYZE {', '.join(TABLES)}")
            live = connection.execute(_MODIFIED, {"tables": list(TABLES)}).one()[1]
            with self._lock:
                self._analyzed_rows = int(live)
                self.runs += 1
        except Exception as exc:  # statistics are an optimisation: never fail a store
            log.warning("could not ANALYZE the index tables: %s", exc)
            with self._lock:
                self._pending += pending

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a running ANALYZE or VACUUM (tests, shutdown)."""
        with self._lock:
            thread = self._running
        if thread is not None:
            thread.join(timeout)
