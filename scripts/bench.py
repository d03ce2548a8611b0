"""Side-by-side benchmark of dicomweb-server against Orthanc with its DICOMweb plugin.

Generates a deterministic workload with pydicom, starts this archive (embedded default, fresh
data folder) and Orthanc (Debian's packages, configured on loopback in the work folder), and
runs every scenario against both, one after the other with the same client and requests,
checking a sample of answers. Bulk reads also run against a bare-ASGI endpoint serving the
same byte ranges (scripts/bench_ceiling.py): the ceiling of the stack. Per scenario it prints
both figures, their ratio, the target and PASS/MISS; ``--output`` writes them all as JSON.

The machine is shared and has 2 cores that client and servers share: compare ratios within one
run, not absolute figures across runs or machines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ingest, reads
from benchlib.client import Request, fetch
from benchlib.report import Scenario, print_summary, write_json
from benchlib.runner import Bench
from benchlib.servers import (
    OURS,
    MemoryMonitor,
    orthanc_available,
    start_archive,
    start_orthanc,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENARIOS = ("stow", "qido", "metadata", "instances", "series", "frames", "rendered")
ALL_SCENARIOS = (*DEFAULT_SCENARIOS, "parse", "large-index")


def _ints(text: str) -> list[int]:
    return [int(value) for value in text.split(",") if value]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated, from: {', '.join(ALL_SCENARIOS)} (large-index is opt-in: long)",
    )
    add("--seconds", type=float, default=30, help="time budget of each read load per server")
    add("--count", type=int, default=400, help="instances per STOW concurrency level")
    add("--per-request", type=int, default=1, help="instances per STOW request")
    add("--stow-concurrency", type=_ints, default=[1, 4, 16], help="STOW client concurrencies")
    add("--stow-seconds", type=float, default=300, help="time cap of each STOW run")
    add("--qido-studies", type=int, default=10_000, help="studies in the QIDO index")
    add("--qido-concurrency", type=int, default=4)
    add("--series-size", type=int, default=300, help="instances of the read series")
    add("--read-concurrency", type=int, default=4, help="metadata, instances, rendered")
    add("--frames", type=int, default=600, help="frames of the multi-frame object")
    add("--frame-concurrency", type=int, default=8)
    add(
        "--orthanc-frame-cap",
        type=int,
        default=2,
        help="Orthanc's concurrency for frames (it reads the whole file per frame)",
    )
    add(
        "--encapsulated",
        default="rle,j2k",
        type=lambda s: [k for k in s.split(",") if k],
        help="encapsulated kinds of the multi-frame object: rle, j2k",
    )
    add(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes of our server and the ceiling: one per core by default, as "
        "docs/deployment.md deploys it (Orthanc uses every core through its threads)",
    )
    add("--no-orthanc", action="store_true", help="benchmark our server (and ceiling) only")
    add(
        "--archive-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of our server, for diagnosis (repeatable)",
    )
    add("--no-ceiling", action="store_true", help="skip the bare-ASGI ceiling")
    add("--memory-limit-mb", type=float, default=500, help="target: our server's peak RSS")
    add(
        "--memory-guard-mb",
        type=int,
        default=8000,
        help="stop a load when a server's RSS exceeds this (protects the machine)",
    )
    add("--output", type=Path, help="write all results as JSON to this file")
    add("--workdir", type=Path, help="work folder (default: a fresh temporary one)")
    add(
        "--cache-dir",
        type=Path,
        default=ROOT / ".cache" / "bench",
        help="where generated multi-frame objects are kept between runs",
    )
    add("--keep", action="store_true", help="keep the work folder and the PostgreSQL database")
    group = parser.add_argument_group("large-index (PostgreSQL, ours alone)")
    group.add_argument(
        "--pg-url",
        default="postgresql://postgres@127.0.0.1:5432",
        help="server URL without database",
    )
    group.add_argument("--pg-database", default="dicomweb_bench")
    group.add_argument("--large-instances", type=int, default=1_000_000)
    group.add_argument("--large-studies", type=int, default=100_000)
    group.add_argument("--large-per-request", type=int, default=50)
    group.add_argument("--large-concurrency", type=int, default=4)
    group.add_argument("--large-seconds", type=float, default=7200, help="ingest time cap")
    group.add_argument("--large-qido-seconds", type=float, default=60)
    args = parser.parse_args(argv)  # fmt: skip
    args.scenario_set = set(args.scenarios.split(","))
    args.extra_env = dict(item.split("=", 1) for item in args.archive_env)
    unknown = args.scenario_set - set(ALL_SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def context(args: argparse.Namespace, started: float, load_start: str) -> dict[str, Any]:
    from dicomweb_server import __version__

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dicomweb_server": __version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "seconds": round(time.monotonic() - started, 1),
        "arguments": {
            k: v for k, v in vars(args).items() if k not in ("scenario_set", "extra_env")
        },
    }
    return info


def guarded(bench: Bench, name: str, action: Callable[[], None]) -> None:
    """Run one scenario; a failure is reported and recorded, and the next one still runs."""
    try:
        action()
    except Exception as exc:
        record_failure(bench, name, exc)


def record_failure(bench: Bench, name: str, exc: Exception) -> None:
    traceback.print_exc()
    failed = Scenario(name, f"{name} (failed)", "-")
    failed.notes.append(f"failed: {exc!r}")
    bench.scenarios.append(failed)


def run_default(bench: Bench) -> None:
    chosen = bench.args.scenario_set
    if "parse" in chosen:
        guarded(bench, "parse", lambda: ingest.bench_parse(bench))
    # QIDO first: its checks know every study in the index only while nothing else is stored.
    if "qido" in chosen:
        guarded(bench, "qido", lambda: ingest.run_qido(bench))
    if "stow" in chosen:
        guarded(bench, "stow", lambda: ingest.run_stow(bench))
    readers = chosen & {"metadata", "instances", "series", "frames", "rendered"}
    if not readers:
        return
    try:
        data = reads.prepare(bench, need_multiframe="frames" in chosen)
    except Exception as exc:
        record_failure(bench, "read_data", exc)
        return
    if "metadata" in chosen:
        guarded(bench, "series_metadata", lambda: reads.run_metadata(bench, data))
    if "instances" in chosen:
        guarded(bench, "wado_instance", lambda: reads.run_instances(bench, data))
    if "series" in chosen:
        guarded(bench, "wado_series", lambda: reads.run_series(bench, data))
    if "frames" in chosen:
        for kind in ("native", *bench.args.encapsulated):
            guarded(bench, f"frames_{kind}", partial(reads.run_frames, bench, data, kind))
    if "rendered" in chosen:
        guarded(bench, "rendered", lambda: reads.run_rendered(bench, data))


def run_large(bench: Bench, workdir: Path, monitor: MemoryMonitor) -> None:
    from benchlib.large_index import run_large_index

    guarded(
        bench,
        "large_index",
        lambda: bench.scenarios.extend(run_large_index(bench, workdir, monitor)),
    )


def _terminate(signum: int, _frame: object) -> None:
    """Turn SIGTERM and SIGHUP into an exception, so servers, work folder and database are
    cleaned up as after Ctrl-C, and the log says why the run ended."""
    print(f"\nbench: received {signal.Signals(signum).name}, stopping", flush=True)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    started = time.monotonic()
    load_start = load_average()
    print(f"dicomweb-server benchmark: {', '.join(sorted(args.scenario_set))}")
    print(f"load average at start: {load_start} ({os.cpu_count()} CPUs; shared machine)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dicomweb-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    monitor = MemoryMonitor()
    guard = args.memory_guard_mb * 1_000_000
    bench: Bench | None = None
    memory: dict[str, float] = {}
    extra: dict[str, Any] = {}
    try:
        ours = start_archive(workdir, workers=args.workers, extra_env=args.extra_env)
        monitor.watch(ours, guard)
        bench = Bench(args, workdir, args.cache_dir, monitor, ours)
        wants_orthanc = args.scenario_set - {"parse", "large-index"}
        if wants_orthanc and not args.no_orthanc:
            if orthanc_available():
                bench.orthanc = start_orthanc(workdir)
                monitor.watch(bench.orthanc, guard)
                system = fetch(bench.orthanc.host, bench.orthanc.port, Request("GET", "/system"))
                extra["orthanc_system"] = json.loads(system.body)
                print(f"Orthanc {extra['orthanc_system'].get('Version')} with its DICOMweb plugin")
            else:
                print("Orthanc is not installed (scripts/orthanc-setup): ours only")
        run_default(bench)
        memory = {name: monitor.peak(name) / 1e6 for name in monitor.watches}
        for server in bench.servers(ceiling=True):
            server.stop()
        if "large-index" in args.scenario_set:
            began = time.monotonic()
            run_large(bench, workdir, monitor)
            extra["large_index_minutes"] = round((time.monotonic() - began) / 60, 1)
            # The PostgreSQL server is ours too: its peak (sampled through its scenarios)
            # counts towards the memory target.
            for scenario in bench.scenarios:
                figures = scenario.figures.get(OURS)
                if scenario.key.startswith("large_") and figures is not None:
                    memory[OURS] = max(memory.get(OURS, 0.0), figures.rss_peak_mb)
            print(f"\nlarge-index scenario took {extra['large_index_minutes']} minutes")
        print_summary(bench.scenarios, memory, args.memory_limit_mb)
        if args.output:
            info = context(args, started, load_start)
            write_json(args.output, bench.scenarios, memory, info, extra)
            print(f"\nresults written to {args.output}")
    finally:
        if bench is not None:
            for server in bench.servers(ceiling=True):
                server.stop()
        else:
            for watch in monitor.watches.values():
                watch.server.stop()
        monitor.close()
        if args.keep or args.workdir:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    misses = [s.key for s in bench.scenarios if s.verdict() == "MISS"] if bench else []
    print(f"\n{len(misses)} scenario(s) missed their targets" if misses else "\nall targets met")
    print(f"total time {(time.monotonic() - started) / 60:.1f} min; load average {load_average()}")
    return 0 if bench is not None else 1


if __name__ == "__main__":
    sys.exit(main())
