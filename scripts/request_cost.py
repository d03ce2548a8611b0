"""What one request costs the archive, measured in-process: for telling whether a change helps.

The side-by-side benchmark (scripts/bench) runs client and servers on a shared 2-core
machine whose speed drifts by a third within minutes, so a change worth 5-15% does not show
in its figures. This script drives the ASGI application directly, without a network or an
HTTP server, through the whole stack a request takes (middleware, authentication off, audit,
metrics, fast lane, index, blob store), and reports CPU per request: per process and for the
event-loop thread. With ``--instructions`` it runs itself twice under valgrind's callgrind
and reports instructions per request, which do not depend on what else the machine does:
runs of the same code agree to within about 2% (thread timing, batching in the audit
writer and collector runs still vary), so changes smaller than that need several runs.

It needs a data folder holding the benchmark's QIDO index and multi-frame objects:

    scripts/bench --no-orthanc --no-ceiling --scenarios qido,frames --keep --workdir W
    python scripts/request_cost.py --data-dir W/archive
    python scripts/request_cost.py --data-dir W/archive --instructions --what frames

It sends GET requests only, and its audit records go to a temporary folder; the
application's start-up housekeeping runs on the folder as it does for ``serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

FRAME_SYNTAXES = {
    "native": "1.2.840.10008.1.2.1",
    "rle": "1.2.840.10008.1.2.5",
    "j2k": "1.2.840.10008.1.2.4.90",
}
FRAMES_ACCEPT = b'multipart/related; type="application/octet-stream"; transfer-syntax=*'
JSON_ACCEPT = b"application/dicom+json"
Target = tuple[str, bytes, bytes]  # path, query string, Accept


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--data-dir", type=Path, required=True, help="an archive data folder (see above)")
    add("--what", default="frames,qido", help="comma-separated: frames, qido")
    add("--frames-kind", choices=sorted(FRAME_SYNTAXES), default="rle")
    add("--qido-studies", type=int, default=10_000, help="studies the QIDO index was built with")
    add("--requests", type=int, default=2000, help="requests per round")
    add("--rounds", type=int, default=5, help="rounds; the cheapest is reported")
    add("--instructions", action="store_true", help="count instructions under callgrind")
    add("--profile", action="store_true", help="also print the event-loop thread's profile")
    return parser.parse_args(argv)


def frame_targets(data_dir: Path, kind: str, count: int) -> list[Target]:
    """Random frames of the largest stored multi-frame object of `kind`."""
    from sqlalchemy import create_engine, select

    from dicomweb_server.index.models import Instance, Series, Study

    engine = create_engine(f"sqlite:///{data_dir / 'index.sqlite'}")
    with engine.connect() as connection:
        row = connection.execute(
            select(
                Study.study_instance_uid,
                Series.series_instance_uid,
                Instance.sop_instance_uid,
                Instance.number_of_frames,
            )
            .join(Series, Instance.series_pk == Series.pk)
            .join(Study, Series.study_pk == Study.pk)
            .where(Instance.transfer_syntax_uid == FRAME_SYNTAXES[kind])
            .order_by(Instance.number_of_frames.desc())
            .limit(1)
        ).first()
    engine.dispose()
    if row is None or not row[3] or row[3] < 2:
        raise SystemExit(f"no multi-frame {kind} object in {data_dir}: see --help")
    study, series, instance = row[0], row[1], row[2]
    frames = int(row[3])
    base = f"/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/"
    rng = random.Random(29)
    return [(base + str(rng.randint(1, frames)), b"", FRAMES_ACCEPT) for _ in range(count)]


def qido_targets(studies: int) -> list[Target]:
    """The benchmark's study-search mix, in its order."""
    from benchlib.ingest import QIDO_KIND
    from benchlib.qido import QueryMix
    from benchlib.workload import make_studies

    targets = []
    for query in QueryMix(make_studies(studies, kind=QIDO_KIND)).queries:
        url = urlsplit(query.path("/dicom-web"))
        targets.append((url.path, url.query.encode(), JSON_ACCEPT))
    return targets


def thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each thread of this process."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        found[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


async def measure(args: argparse.Namespace, what: str, targets: list[Target]) -> None:
    from dicomweb_server.app import create_app
    from dicomweb_server.heap import settle_after_startup
    from dicomweb_server.settings import Settings

    app = create_app(Settings(data_dir=args.data_dir))
    statuses: dict[int, int] = {}

    async def request(target: Target) -> None:
        path, query, accept = target
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": query,
            "headers": [(b"host", b"127.0.0.1:8042"), (b"accept", accept)],
            "server": ("127.0.0.1", 8042),
            "client": ("127.0.0.1", 40000),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                statuses[status] = statuses.get(status, 0) + 1

        await app(scope, receive, send)

    async with app.router.lifespan_context(app):
        settle_after_startup()
        for index in range(min(200, len(targets))):  # warm caches and statements
            await request(targets[index])
        best = best_loop = float("inf")
        threads: dict[int, float] = {}
        for _ in range(args.rounds):
            before, loop_before = thread_cpu(), time.thread_time()
            for index in range(args.requests):
                await request(targets[index % len(targets)])
            after, loop_time = thread_cpu(), time.thread_time() - loop_before
            total = sum(after.values()) - sum(before.get(tid, 0.0) for tid in after)
            if total < best:
                best, best_loop = total, loop_time
                threads = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
        names = {thread.native_id: thread.name for thread in threading.enumerate()}
        per = 1e6 / args.requests
        print(
            f"{what}: {best * per:.0f} µs CPU per request (the cheapest of {args.rounds} "
            f"rounds of {args.requests}), event-loop thread {best_loop * per:.0f} µs"
        )
        by_name: dict[str, float] = {}
        for tid, seconds in threads.items():
            name = re.sub(r"[-_ ]?\d+$", "", names.get(tid, "other"))
            by_name[name] = by_name.get(name, 0.0) + seconds
        for name, seconds in sorted(by_name.items(), key=lambda item: -item[1]):
            if seconds * per >= 1:
                print(f"  {name:<24} {seconds * per:7.0f} µs")
        bad = {status: n for status, n in statuses.items() if status >= 400}
        if bad:
            raise SystemExit(f"{what}: error responses {bad}: is the data folder complete?")
        if args.profile:
            import cProfile
            import pstats

            profile = cProfile.Profile()
            profile.enable()
            for index in range(args.requests):
                await request(targets[index % len(targets)])
            profile.disable()
            pstats.Stats(profile).sort_stats("cumulative").print_stats(40)


def count_instructions(args: argparse.Namespace, what: str) -> None:
    """Instructions per request: two runs under callgrind differing only in their number of
    requests, so that start-up and warm-up cancel out."""
    small, large = args.requests, args.requests * 3
    counts = []
    for requests in (small, large):
        with tempfile.TemporaryDirectory() as folder:
            command = [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/out",
                sys.executable, __file__, "--data-dir", str(args.data_dir), "--what", what,
                "--frames-kind", args.frames_kind, "--qido-studies", str(args.qido_studies),
                "--requests", str(requests), "--rounds", "1",
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            found = re.search(r"Collected : (\d+)", done.stderr)
            if done.returncode or found is None:
                raise SystemExit(f"callgrind run failed:\n{done.stdout}\n{done.stderr[-2000:]}")
            counts.append(int(found.group(1)))
    per_request = (counts[1] - counts[0]) / (large - small)
    print(f"{what}: {per_request / 1e6:.3f} M instructions per request "
          f"({small} and {large} requests under callgrind)")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.data_dir = args.data_dir.resolve()
    if not (args.data_dir / "index.sqlite").is_file():
        raise SystemExit(f"{args.data_dir} holds no index.sqlite: see --help")
    kinds = [item for item in args.what.split(",") if item]
    unknown = set(kinds) - {"frames", "qido"}
    if unknown:
        raise SystemExit(f"unknown --what: {', '.join(sorted(unknown))} (frames, qido)")
    if args.instructions and shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (Debian package valgrind)")
    os.environ["DICOMWEB_AUTH"] = "off"
    with tempfile.TemporaryDirectory() as audit:
        os.environ["DICOMWEB_AUDIT_DIR"] = audit
        for what in kinds:
            if args.instructions:
                count_instructions(args, what)
            elif what == "frames":
                targets = frame_targets(args.data_dir, args.frames_kind, 5000)
                asyncio.run(measure(args, what, targets))
            else:
                asyncio.run(measure(args, what, qido_targets(args.qido_studies)))


if __name__ == "__main__":
    main()
