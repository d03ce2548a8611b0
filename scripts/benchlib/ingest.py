"""Scenarios that write or search: STOW-RS ingest and QIDO-RS study searches."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from .client import LoadResult, Request, fetch, run_load
from .multipart import parts
from .qido import LABELS, QueryMix
from .report import Scenario
from .runner import DICOM_ACCEPT, JSON_ACCEPT, Bench, load_instances, orthanc_rest_jobs, stow_jobs
from .servers import ORTHANC_NAME, Server, start_ceiling
from .workload import CTSeries, SmallInstance, make_studies

QIDO_KIND = 30


def verify_stored(
    server: Server, series: CTSeries, instances: list[bytes], stored: int
) -> tuple[int, int]:
    """Check what a STOW run stored: the study's instance count and three byte-exact copies.

    Returns (checks made, checks failed).
    """
    checks = failed = 0
    response = fetch(
        server.host,
        server.port,
        Request(
            "GET",
            server.path(f"/studies?StudyInstanceUID={series.study}"),
            (("Accept", JSON_ACCEPT),),
        ),
    )
    checks += 1
    try:
        count = json.loads(response.body)[0]["00201208"]["Value"][0]
        failed += int(count) != stored
    except (ValueError, LookupError):
        failed += 1
    for index in sorted({0, stored // 2, max(0, stored - 1)}):
        response = fetch(
            server.host,
            server.port,
            Request("GET", server.path(series.url(index)), (("Accept", DICOM_ACCEPT),)),
        )
        checks += 1
        try:
            failed += (
                parts(response.body, response.headers["content-type"])[0][1] != instances[index]
            )
        except (ValueError, KeyError):
            failed += 1
    return checks, failed


def verify_ceiling_store(
    folder: Path, before: set[str], instances: list[bytes], stored: int
) -> tuple[int, int]:
    """Check what a STOW run left in the ceiling's folder: one new file per instance it
    acknowledged, each byte for byte one of the instances sent. Returns (checks, failures)."""
    sent = {hashlib.sha256(data).digest() for data in instances}
    new = [folder / name for name in sorted(_stored_names(folder) - before)]
    failed = int(len(new) != stored)
    for path in new:
        failed += hashlib.sha256(path.read_bytes()).digest() not in sent
    return 1 + len(new), failed


def _stored_names(folder: Path) -> set[str]:
    return {path.name for path in folder.glob("*.dcm")}


def run_stow(bench: Bench) -> None:
    """STOW-RS of 512x512 CT slices at each client concurrency, the same instances to each.

    Unless ``--no-ceiling``, the bare-ASGI ceiling takes the same requests too, writing each
    part to a flushed file: what storing over HTTP costs on this stack before any archive
    work (scripts/bench_ceiling.py).
    """
    args = bench.args
    ceiling: Server | None = None
    folder = bench.workdir / "ceiling-store"
    if not args.no_ceiling:
        ceiling = start_ceiling(bench.workdir, None, workers=args.workers, store=folder)
        bench.monitor.watch(ceiling, args.memory_guard_mb * 1_000_000)
    try:
        _run_stow_levels(bench, ceiling, folder)
    finally:
        if ceiling is not None:
            ceiling.stop()
            bench.monitor.forget(ceiling.name)


def _run_stow_levels(bench: Bench, ceiling: Server | None, folder: Path) -> None:
    args = bench.args
    servers = [*bench.servers(), *([ceiling] if ceiling is not None else [])]
    for level, concurrency in enumerate(args.stow_concurrency):
        series = CTSeries(kind=50 + level, patient=level + 1)
        instances = series.instances(args.count)
        per = args.per_request
        batches = [instances[i : i + per] for i in range(0, len(instances), per)]
        scenario = Scenario(
            f"stow_c{concurrency}",
            f"STOW-RS c={concurrency} ({args.count} CT 512x512, {per}/request)",
            "inst/s",
            min_ratio=1.5,
            short=f"STOW c={concurrency}",
        )
        for server in servers:
            before = _stored_names(folder) if server is ceiling else set()
            load = bench.measure(
                scenario,
                server,
                stow_jobs(server, batches),
                concurrency=concurrency,
                value=lambda load: load.unit_rate,
                seconds=args.stow_seconds,
                max_requests=len(batches),
                warmup=0,
                sent=True,
            )
            if server is ceiling:
                checks, failed = verify_ceiling_store(folder, before, instances, load.units)
            else:
                checks, failed = verify_stored(server, series, instances, load.units)
            figures = scenario.figures[server.name]
            figures.checked += checks
            figures.wrong += failed
        bench.finish(scenario)


def load_qido_index(bench: Bench, studies: int) -> QueryMix:
    """Load `studies` one-instance studies into every server; report how long it took."""
    catalogue = make_studies(studies, kind=QIDO_KIND)
    template = SmallInstance()
    instances = [
        data
        for study in catalogue
        for data in template.study_instances(study, kind=QIDO_KIND, per_study=1, per_series=1)
    ]
    print(f"\nLoading {studies} studies (one small instance each) into each server ...")
    for server in bench.servers():
        began = time.perf_counter()
        if server.name == ORTHANC_NAME:
            load = run_load(
                server.host,
                server.port,
                orthanc_rest_jobs(server, instances),
                concurrency=4,
                max_requests=len(instances),
                seconds=3600,
            )
            if load.errors:
                raise RuntimeError(f"loading Orthanc failed: {'; '.join(load.problems)}")
            how = "REST POST /instances, 1 per request, 4 clients"
        else:
            load_instances(server, instances, per_request=50, concurrency=4, count=len(instances))
            how = "STOW-RS, 50 per request, 4 clients"
        seconds = time.perf_counter() - began
        print(
            f"  {server.name:<16} {seconds:6.1f} s, {len(instances) / seconds:7.0f} inst/s ({how})"
        )
    return QueryMix(catalogue)


def run_qido(bench: Bench) -> None:
    """Study searches on an index of `--qido-studies` studies."""
    args = bench.args
    mix = load_qido_index(bench, args.qido_studies)
    scenario = Scenario(
        "qido_studies",
        f"QIDO-RS study search, {args.qido_studies} studies, c={args.qido_concurrency}",
        "req/s",
        min_ratio=50,
        max_p99_ms=50,
        short=f"QIDO studies ({args.qido_studies})",
    )
    for server in bench.servers():
        load = bench.measure(
            scenario,
            server,
            mix.jobs(server),
            concurrency=args.qido_concurrency,
            value=lambda load: load.rate,
            check_every=7,
            warmup=len(LABELS) * 2,
        )
        scenario.notes.append(label_latencies(server.name, load))
    bench.finish(scenario)


def label_latencies(name: str, load: LoadResult) -> str:
    """p50/p99 per kind of search, to see which kind is slow."""
    pieces = [
        f"{label} {load.percentile_ms(0.5, label):.1f}/{load.percentile_ms(0.99, label):.1f}"
        for label in LABELS
        if label in load.by_label
    ]
    return f"{name} p50/p99 ms by search: " + ", ".join(pieces)


def bench_parse(bench: Bench) -> None:
    """Ingest-time parsing per instance: ours against pydicom's dcmread + to_json_dict.

    Not a comparison with Orthanc: it shows what one instance's parse costs in the ingest path.
    """
    import pydicom
    from pydicom.data import get_testdata_file

    from dicomweb_server.dicom.parse import parse_instance

    generated = bench.workdir / "ct512.dcm"
    generated.write_bytes(CTSeries(kind=70).instance(0))
    files = [("generated CT 512x512", generated)] + [
        (name, Path(str(get_testdata_file(name))))
        for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")
    ]

    def best_ms(function: Callable[[], object], number: int = 200) -> float:
        timings = []
        for _ in range(5):
            began = time.perf_counter()
            for _ in range(number):
                function()
            timings.append((time.perf_counter() - began) / number * 1000)
        return min(timings)

    print("\nIngest parse per instance, best of 5 (pydicom: dcmread + to_json_dict, less work)")
    print(f"  {'file':<24}{'parse_instance ms':>19}{'pydicom ms':>12}{'ratio':>8}")
    for label, path in files:
        ours = best_ms(
            lambda path=path: parse_instance(  # type: ignore[misc]
                path, bulk_data_threshold=1024, bulk_uri=lambda *_: "/bulk"
            )
        )
        theirs = best_ms(
            lambda path=path: pydicom.dcmread(path, stop_before_pixels=True).to_json_dict(  # type: ignore[misc]
                1024, lambda _element: "/bulk"
            )
        )
        print(f"  {label:<24}{ours:>19.3f}{theirs:>12.3f}{theirs / ours:>7.1f}x")
