"""What every scenario shares: the servers, the memory monitor, measuring one load, loading data.

Scenarios run against the servers interleaved: ours, then Orthanc, then (for bulk reads)
the bare-ASGI ceiling, with the same jobs and the same client, one after the other, so a
change in the machine's load affects neighbouring figures alike.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .client import Job, LoadResult, Request, run_load
from .multipart import STOW_CONTENT_TYPE, stow_body
from .report import Figures, Scenario, print_scenario
from .servers import ORTHANC_NAME, MemoryMonitor, Server

STOW_HEADERS = (("Content-Type", STOW_CONTENT_TYPE), ("Accept", "application/dicom+json"))
DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
JSON_ACCEPT = "application/dicom+json"


@dataclass
class Bench:
    """The run's servers, options and results so far."""

    args: argparse.Namespace
    workdir: Path
    cache: Path
    monitor: MemoryMonitor
    ours: Server
    orthanc: Server | None = None
    ceiling: Server | None = None
    scenarios: list[Scenario] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def servers(self, *, ceiling: bool = False) -> list[Server]:
        """Ours, Orthanc when running, and the ceiling when asked and running, in that order."""
        found = [self.ours]
        if self.orthanc is not None:
            found.append(self.orthanc)
        if ceiling and self.ceiling is not None:
            found.append(self.ceiling)
        return found

    def measure(
        self,
        scenario: Scenario,
        server: Server,
        jobs: Callable[[int], Job],
        *,
        concurrency: int,
        value: Callable[[LoadResult], float],
        seconds: float | None = None,
        max_requests: int = 10**8,
        check_every: int = 10,
        warmup: int | None = None,
        sent: bool = False,
        min_requests: int = 10,
    ) -> LoadResult:
        """Run one load against `server` and file its figures under `scenario`."""
        self.monitor.begin(server.name)
        cpu_before = [server.cpu_seconds()]

        def started() -> None:
            cpu_before[0] = server.cpu_seconds()

        load = run_load(
            server.host,
            server.port,
            jobs,
            concurrency=concurrency,
            max_requests=max_requests,
            seconds=self.args.seconds if seconds is None else seconds,
            check_every=check_every,
            warmup=concurrency if warmup is None else warmup,
            stop=self.monitor.stop_event(server.name),
            min_requests=min_requests,
            on_start=started,
        )
        cpu = server.cpu_seconds() - cpu_before[0]
        figures = Figures.of(load, value(load), self.monitor.window(server.name), sent=sent)
        if load.requests:
            figures.cpu_ms_per_request = cpu / load.requests * 1000
        scenario.figures[server.name] = figures
        if not server.alive():
            figures.stopped = f"server exited with {server.process.returncode}"
        return load

    def concurrency_for(self, server: Server, wanted: int, cap: int | None) -> int:
        """`wanted`, or `cap` for Orthanc where whole-file reads per request need protecting."""
        if server.name == ORTHANC_NAME and cap is not None:
            return min(wanted, cap)
        return wanted

    def finish(self, scenario: Scenario) -> None:
        self.scenarios.append(scenario)
        print_scenario(scenario)


def stow_jobs(server: Server, batches: list[list[bytes]]) -> Callable[[int], Job]:
    """Jobs sending each batch as one STOW-RS request (bodies built when sent)."""

    def job(index: int) -> Job:
        batch = batches[index]
        request = Request("POST", server.path("/studies"), STOW_HEADERS, stow_body(batch))
        return Job(request, units=len(batch))

    return job


def load_instances(
    server: Server,
    instances: Iterable[bytes],
    *,
    per_request: int,
    concurrency: int,
    count: int,
) -> LoadResult:
    """Store `count` instances with STOW-RS; raises if any request fails.

    Used to prepare read scenarios, so it is timed but not a figure.
    """
    iterator = iter(instances)
    batches: list[list[bytes]] = []
    while True:
        batch = [data for _, data in zip(range(per_request), iterator, strict=False)]
        if not batch:
            break
        batches.append(batch)
    load = run_load(
        server.host,
        server.port,
        stow_jobs(server, batches),
        concurrency=concurrency,
        max_requests=len(batches),
        seconds=3600,
    )
    if load.errors or load.units != count:
        raise RuntimeError(
            f"loading into {server.name} failed: stored {load.units} of {count}; "
            f"{'; '.join(load.problems)}"
        )
    return load


def orthanc_rest_jobs(server: Server, instances: list[bytes]) -> Callable[[int], Job]:
    """Jobs storing one instance each with Orthanc's REST ``POST /instances``.

    Its fastest way in over HTTP: no multipart parsing and no DICOMweb response to build.
    """

    def job(index: int) -> Job:
        request = Request(
            "POST", "/instances", (("Content-Type", "application/dicom"),), instances[index]
        )
        return Job(request)

    return job
