"""The large-index scenario: our server alone on PostgreSQL with 1,000,000 instances.

Ingest goes through the production path, STOW-RS over HTTP from several concurrent clients
with several small instances per request, into a dedicated database created for the run
(dropped afterwards unless ``--keep``). The figure that matters is whether ingest slows as the
index grows: instances/s over the last 10% against the first 10%. Then the QIDO study-search
mix runs on the full index (100,000 studies), where p99 must stay under 50 ms.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .client import Job, LoadResult, Request, fetch, run_load
from .ingest import label_latencies
from .multipart import parts, stow_body
from .qido import LABELS, QueryMix
from .report import Figures, Scenario, print_scenario
from .runner import DICOM_ACCEPT, JSON_ACCEPT, STOW_HEADERS, Bench
from .servers import OURS, MemoryMonitor, Server, start_archive
from .workload import SmallInstance, Study, make_studies, uid

LARGE_KIND = 40


def _admin(base_url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(f"{base_url}/postgres", autocommit=True) as connection:
        connection.execute(statement)


def vacuum_after_load(url: str) -> tuple[float, bool]:
    """VACUUM (ANALYZE) the freshly loaded index; returns (seconds, autovacuum on).

    PostgreSQL's own advice after a bulk load, and what autovacuum would have done by the
    time the searches run. Without it (this machine's server runs with autovacuum off) no
    page is marked all-visible, so every index-only scan the QIDO plans rely on fetches
    each row from the table as well, a cost no production index carries.
    """
    import time

    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute("SELECT current_setting('autovacuum')").fetchone()
        started = time.perf_counter()
        connection.execute("VACUUM (ANALYZE)")
        return time.perf_counter() - started, bool(row and row[0] == "on")


def database_size(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0


def tail_rates(completions: list[tuple[float, int]], total: int) -> tuple[float, float]:
    """Instances/s over the first 10% and the last 10% of `total`, from completion times.

    `completions` are (seconds since start, instances) in completion order. The first 10%
    spans from the start to the completion that reaches 10% of `total`; the last 10% from the
    completion that reaches 90% to the last one.
    """
    if not completions or total <= 0:
        return 0.0, 0.0
    done = 0
    first_mark = last_mark = None
    for seconds, units in completions:
        before = done
        done += units
        if first_mark is None and done >= 0.1 * total:
            first_mark = (seconds, done)
        if last_mark is None and done >= 0.9 * total:
            last_mark = (seconds, before + units)
    end_seconds = completions[-1][0]
    first = first_mark[1] / first_mark[0] if first_mark and first_mark[0] > 0 else 0.0
    if last_mark is None or end_seconds <= last_mark[0]:
        return first, 0.0
    return first, (done - last_mark[1]) / (end_seconds - last_mark[0])


class Ingest:
    """STOW jobs covering `studies` x `per_study` instances, `per_request` per request."""

    def __init__(
        self, server: Server, studies: list[Study], per_study: int, per_request: int
    ) -> None:
        self.server = server
        self.studies = studies
        self.per_study = per_study
        self.per_request = per_request
        self.total = len(studies) * per_study
        self.requests = -(-self.total // per_request)
        self.template = SmallInstance()
        self.path = server.path("/studies")

    def instance(self, number: int) -> bytes:
        study = self.studies[number // self.per_study]
        return self.template.instance(
            study,
            kind=LARGE_KIND,
            number=number % self.per_study,
            per_series=max(1, self.per_study // 2),
        )

    def job(self, index: int) -> Job:
        first = index * self.per_request
        batch = [self.instance(n) for n in range(first, min(self.total, first + self.per_request))]
        return Job(Request("POST", self.path, STOW_HEADERS, stow_body(batch)), units=len(batch))


def verify_sample(ingest: Ingest, server: Server, samples: int = 20) -> tuple[int, int]:
    """Instance counts of sampled studies and a byte-exact copy of one instance per study."""
    rng = random.Random(41)
    checks = failed = 0
    for _ in range(samples):
        index = rng.randrange(len(ingest.studies))
        study = ingest.studies[index]
        answer = fetch(server.host, server.port, Request(
            "GET", server.path(f"/studies?StudyInstanceUID={study.study_uid}"),
            (("Accept", JSON_ACCEPT),)))  # fmt: skip
        checks += 1
        try:
            failed += json.loads(answer.body)[0]["00201208"]["Value"][0] != ingest.per_study
        except (ValueError, LookupError):
            failed += 1
        number = index * ingest.per_study
        data = ingest.instance(number)
        series = uid(LARGE_KIND + 1, index * 100)
        sop = uid(LARGE_KIND + 2, index * 1000)
        answer = fetch(server.host, server.port, Request(
            "GET", server.path(f"/studies/{study.study_uid}/series/{series}/instances/{sop}"),
            (("Accept", DICOM_ACCEPT),)))  # fmt: skip
        checks += 1
        try:
            failed += parts(answer.body, answer.headers["content-type"])[0][1] != data
        except (ValueError, KeyError):
            failed += 1
    return checks, failed


def cpu_per_instance(samples: list[tuple[int, float]], total: int) -> tuple[float, float]:
    """Server CPU ms per instance over the first and the last 10% of `total`.

    `samples` are (instances stored, server CPU seconds), in order, starting at (0, cpu at
    start). Unlike instances/s, CPU per instance does not change when other work on a shared
    machine takes CPU away, so it shows whether each instance costs more as the index grows.
    """

    def between(low: tuple[int, float], high: tuple[int, float]) -> float:
        units = high[0] - low[0]
        return (high[1] - low[1]) / units * 1000 if units > 0 else float("nan")

    if len(samples) < 2 or total <= 0:
        return float("nan"), float("nan")
    first_end = next((s for s in samples if s[0] >= 0.1 * total), samples[-1])
    last_index = next((i for i, s in enumerate(samples) if s[0] >= 0.9 * total), len(samples))
    # A short run may have no sample inside its last 10%: start from the one before.
    last_start = samples[min(last_index, len(samples) - 2)]
    return between(samples[0], first_end), between(last_start, samples[-1])


class Progress:
    """Prints progress every minute and samples the server's CPU every 10 seconds."""

    def __init__(self, server: Server, total: int) -> None:
        self.server = server
        self.total = total
        self.samples: list[tuple[int, float]] = [(0, server.cpu_seconds())]
        self._printed = 0.0

    def __call__(self, result: LoadResult, elapsed: float) -> None:
        self.samples.append((result.units, self.server.cpu_seconds()))
        if elapsed - self._printed < 59:
            return
        self._printed = elapsed
        rate = result.units / elapsed if elapsed else 0.0
        eta = (self.total - result.units) / rate if rate else float("inf")
        print(
            f"  {result.units:>9,} / {self.total:,} instances, {elapsed:6.0f} s, "
            f"{rate:6.0f} inst/s overall, ~{eta:5.0f} s left, {result.errors} errors",
            flush=True,
        )


def run_large_index(bench: Bench, workdir: Path, monitor: MemoryMonitor) -> list[Scenario]:
    """Create the database, ingest, search, drop; return the two scenarios."""
    args = bench.args
    url = f"{args.pg_url}/{args.pg_database}"
    _admin(args.pg_url, f'DROP DATABASE IF EXISTS "{args.pg_database}" WITH (FORCE)')
    _admin(args.pg_url, f'CREATE DATABASE "{args.pg_database}"')
    server: Server | None = None
    try:
        server = start_archive(
            workdir,
            workers=args.workers,
            name="archive-pg",
            database_url=url,
            extra_env=args.extra_env,
        )
        monitor.watch(server, args.memory_guard_mb * 1_000_000)
        per_study = max(1, args.large_instances // args.large_studies)
        studies = make_studies(args.large_studies, kind=LARGE_KIND)
        per_request = args.large_per_request
        ingest = Ingest(server, studies, per_study, per_request)
        print(
            f"\nPostgreSQL large index: ingesting {ingest.total:,} instances in "
            f"{len(studies):,} studies, {args.large_per_request} per STOW request, "
            f"{args.large_concurrency} clients (database {args.pg_database})",
            flush=True,
        )
        monitor.begin(server.name)
        cpu_before = server.cpu_seconds()
        progress = Progress(server, ingest.total)
        load = run_load(
            server.host, server.port, ingest.job, concurrency=args.large_concurrency,
            max_requests=ingest.requests, seconds=args.large_seconds, warmup=0,
            progress=progress, progress_every=10,
        )  # fmt: skip
        first, last = tail_rates(load.completions, ingest.total)
        progress.samples.append((load.units, server.cpu_seconds()))
        cpu_first, cpu_last = cpu_per_instance(progress.samples, ingest.total)
        ratio = last / first if first else 0.0
        ingest_scenario = Scenario(
            "large_ingest",
            f"PostgreSQL ingest, {ingest.total:,} instances / {len(studies):,} studies",
            "inst/s",
            checks={"last 10% >= 0.8x first 10%": ratio >= 0.8 and load.units == ingest.total},
            short=f"PG ingest ({ingest.total:,})",
        )
        figures = Figures.of(load, load.unit_rate, monitor.window(server.name), sent=True)
        if load.requests:
            figures.cpu_ms_per_request = (server.cpu_seconds() - cpu_before) / load.requests * 1000
        checks, failed = verify_sample(ingest, server)
        figures.checked += checks
        figures.wrong += failed
        ingest_scenario.figures[OURS] = figures
        size = database_size(url)
        ingest_scenario.notes += [
            f"first 10%: {first:.0f} inst/s, last 10%: {last:.0f} inst/s, "
            f"last/first {ratio:.2f}; {load.units:,} stored in {load.seconds:.0f} s",
            f"server CPU per instance: first 10% {cpu_first:.2f} ms, last 10% {cpu_last:.2f} ms "
            "(steady under other load, unlike instances/s)",
            f"database size after ingest: {size / 1e6:.0f} MB; server CPU "
            f"{figures.cpu_ms_per_request / per_request:.2f} ms per instance",
        ]
        print_scenario(ingest_scenario)

        seconds, autovacuum = vacuum_after_load(url)
        print(
            f"  VACUUM (ANALYZE) after the load: {seconds:.0f} s "
            f"(autovacuum {'on' if autovacuum else 'off'} on this server)",
            flush=True,
        )

        mix = QueryMix(studies)
        qido_scenario = Scenario(
            "large_qido",
            f"PostgreSQL QIDO study search, {len(studies):,} studies, c={args.qido_concurrency}",
            "req/s",
            max_p99_ms=50,
            short=f"PG QIDO ({len(studies):,} studies)",
        )
        monitor.begin(server.name)
        cpu_before = server.cpu_seconds()
        search = run_load(
            server.host, server.port, mix.jobs(server), concurrency=args.qido_concurrency,
            max_requests=10**8, seconds=args.large_qido_seconds, check_every=7,
            warmup=len(LABELS) * 2,
        )  # fmt: skip
        qido_figures = Figures.of(search, search.rate, monitor.window(server.name))
        if search.requests:
            qido_figures.cpu_ms_per_request = (
                (server.cpu_seconds() - cpu_before) / search.requests * 1000
            )
        qido_scenario.figures[OURS] = qido_figures
        qido_scenario.notes.append(label_latencies(OURS, search))
        qido_scenario.notes.append(
            f"searched after VACUUM (ANALYZE) of the loaded index ({seconds:.0f} s), as "
            "autovacuum or an administrator would have run it after a bulk load"
        )
        print_scenario(qido_scenario)
        return [ingest_scenario, qido_scenario]
    finally:
        if server is not None:
            server.stop()
            monitor.forget(server.name)
        if not args.keep:
            _admin(args.pg_url, f'DROP DATABASE IF EXISTS "{args.pg_database}" WITH (FORCE)')
