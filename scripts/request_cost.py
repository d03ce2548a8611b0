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

Its audit records go to a temporary folder; the application's start-up housekeeping runs
on the folder as it does for ``serve``. With $DICOMWEB_DATABASE_URL set, the index is that
PostgreSQL database (build one with ``scripts/bench ... --archive-env
DICOMWEB_DATABASE_URL=postgresql://...``). ``--what stow`` needs no data folder: it stores the
benchmark's 512x512 CT slices, one per STOW-RS request, into a fresh archive in a temporary
folder (one series, as a benchmark level does), so what it counts is the archive's own work
on an instance: receiving, staging, hashing, parsing, indexing, auditing and answering.
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
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
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
KINDS = ("frames", "qido", "stow")
#: What uvicorn hands the application per body message (its read size).
BODY_CHUNK = 65_536


@dataclass(frozen=True, slots=True)
class Target:
    """One request: GET unless it has a body (then a STOW-RS POST), in uvicorn-sized chunks."""

    path: str
    query: bytes = b""
    accept: bytes = JSON_ACCEPT
    body: tuple[bytes, ...] | None = None
    content_type: bytes = b""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--data-dir", type=Path, help="an archive data folder (see above; not for stow)")
    add("--what", default="frames,qido", help=f"comma-separated: {', '.join(KINDS)}")
    add("--frames-kind", choices=sorted(FRAME_SYNTAXES), default="rle")
    add("--qido-studies", type=int, default=10_000, help="studies the QIDO index was built with")
    add("--requests", type=int, default=2000, help="requests per round")
    add("--rounds", type=int, default=5, help="rounds; the cheapest is reported")
    add("--warmup", type=int, default=200, help="requests before the first round")
    add("--instructions", action="store_true", help="count instructions under callgrind")
    add("--profile", action="store_true", help="also print the event-loop thread's profile")
    return parser.parse_args(argv)


def index_url(data_dir: Path) -> Any:
    """The index the archive under test uses, decided as ``serve`` decides it (the settings'
    database URL: $DICOMWEB_DATABASE_URL, else the folder's SQLite file), in the form the
    archive connects with (psycopg 3 for PostgreSQL)."""
    from dicomweb_server.index.database import is_postgresql_url, postgresql_url
    from dicomweb_server.settings import Settings

    url = Settings(data_dir=data_dir).resolved_database_url
    return postgresql_url(url) if is_postgresql_url(url) else url


def frame_targets(data_dir: Path, kind: str, count: int) -> list[Target]:
    """Random frames of the largest stored multi-frame object of `kind`."""
    from sqlalchemy import create_engine, select

    from dicomweb_server.index.models import Instance, Series, Study

    engine = create_engine(index_url(data_dir))
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
    return [Target(base + str(rng.randint(1, frames)), accept=FRAMES_ACCEPT) for _ in range(count)]


def qido_targets(studies: int) -> list[Target]:
    """The benchmark's study-search mix, in its order."""
    from benchlib.ingest import QIDO_KIND
    from benchlib.qido import QueryMix
    from benchlib.workload import make_studies

    targets = []
    for query in QueryMix(make_studies(studies, kind=QIDO_KIND)).queries:
        url = urlsplit(query.path("/dicom-web"))
        targets.append(Target(url.path, url.query.encode()))
    return targets


class StowTargets(Sequence[Target]):
    """The benchmark's CT slices, one STOW-RS request each, built when asked for.

    Slice ``i`` is slice 0 with its SOP Instance UID replaced (the generated UIDs have a fixed
    width, and they all lie in the body's first chunk): building a request then costs one
    64 KB splice, next to nothing beside storing 525 KB, so the CPU measured is the archive's.
    """

    def __init__(self, count: int) -> None:
        from benchlib.multipart import STOW_CONTENT_TYPE, stow_body
        from benchlib.workload import CTSeries

        self._count = count
        self._series = CTSeries(kind=50)
        body = stow_body([self._series.instance(0)])
        self._chunks = tuple(
            body[start : start + BODY_CHUNK] for start in range(0, len(body), BODY_CHUNK)
        )
        self._uid = self._series.sop_uid(0).encode()
        if self._chunks[0].count(self._uid) != body.count(self._uid) or not body.count(self._uid):
            raise SystemExit("stow: the template's UIDs are not all in its first chunk")
        self._content_type = STOW_CONTENT_TYPE.encode()

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> Target:  # type: ignore[override]
        if not 0 <= index < self._count:
            raise IndexError(index)
        first = self._chunks[0].replace(self._uid, self._series.sop_uid(index).encode())
        return Target(
            "/dicom-web/studies",
            body=(first, *self._chunks[1:]),
            content_type=self._content_type,
        )


def thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each thread of this process."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        found[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def body_messages(body: tuple[bytes, ...] | None) -> Callable[[], Any]:
    """An ASGI ``receive`` handing over ``body``'s chunks, one message each."""
    chunks = body or (b"",)
    position = 0

    async def receive() -> dict[str, Any]:
        nonlocal position
        if position >= len(chunks):
            return {"type": "http.disconnect"}
        position += 1
        more = position < len(chunks)
        return {"type": "http.request", "body": chunks[position - 1], "more_body": more}

    return receive


async def measure(
    args: argparse.Namespace, what: str, targets: Sequence[Target], data_dir: Path
) -> None:
    from dicomweb_server.app import create_app
    from dicomweb_server.heap import settle_after_startup
    from dicomweb_server.settings import Settings

    settings = Settings(data_dir=data_dir)
    if isinstance(targets, StowTargets):  # a fresh archive: ``serve`` would migrate it first
        from dicomweb_server.index.database import upgrade_schema

        upgrade_schema(settings.resolved_database_url)
    app = create_app(settings)
    statuses: dict[int, int] = {}
    warmup = min(args.warmup, len(targets))

    async def request(target: Target) -> None:
        headers = [(b"host", b"127.0.0.1:8042"), (b"accept", target.accept)]
        if target.body is not None:
            headers += [
                (b"content-type", target.content_type),
                (b"content-length", str(sum(map(len, target.body))).encode()),
            ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET" if target.body is None else "POST",
            "scheme": "http",
            "path": target.path,
            "raw_path": target.path.encode(),
            "root_path": "",
            "query_string": target.query,
            "headers": headers,
            "server": ("127.0.0.1", 8042),
            "client": ("127.0.0.1", 40000),
        }
        receive = body_messages(target.body)

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                statuses[status] = statuses.get(status, 0) + 1

        await app(scope, receive, send)

    async with app.router.lifespan_context(app):
        settle_after_startup()
        for index in range(warmup):  # warm caches and statements
            await request(targets[index])
        best = best_loop = float("inf")
        threads: dict[int, float] = {}
        sent = warmup
        for _ in range(args.rounds):
            before, loop_before = thread_cpu(), time.thread_time()
            for _ in range(args.requests):
                await request(targets[sent % len(targets)])
                sent += 1
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
            for _ in range(args.requests):
                await request(targets[sent % len(targets)])
                sent += 1
            profile.disable()
            pstats.Stats(profile).sort_stats(os.environ.get("SORT", "cumulative")).print_stats(40)


def count_instructions(args: argparse.Namespace, what: str) -> None:
    """Instructions per request: two runs under callgrind differing only in their number of
    requests, so that start-up and warm-up cancel out."""
    small, large = args.requests, args.requests * 3
    counts = []
    for requests in (small, large):
        with tempfile.TemporaryDirectory() as folder:
            command = [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/out",
                sys.executable, __file__, "--what", what,
                "--frames-kind", args.frames_kind, "--qido-studies", str(args.qido_studies),
                "--requests", str(requests), "--rounds", "1", "--warmup", str(args.warmup),
            ]  # fmt: skip
            if args.data_dir is not None:
                command += ["--data-dir", str(args.data_dir)]
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
    kinds = [item for item in args.what.split(",") if item]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"unknown --what: {', '.join(sorted(unknown))} ({', '.join(KINDS)})")
    if set(kinds) - {"stow"}:
        if args.data_dir is None:
            raise SystemExit("frames and qido need --data-dir: see --help")
        args.data_dir = args.data_dir.resolve()
        if (
            str(index_url(args.data_dir)).startswith("sqlite")
            and not (args.data_dir / "index.sqlite").is_file()
        ):
            raise SystemExit(f"{args.data_dir} holds no index.sqlite: see --help")
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
                asyncio.run(measure(args, what, targets, args.data_dir))
            elif what == "qido":
                targets = qido_targets(args.qido_studies)
                asyncio.run(measure(args, what, targets, args.data_dir))
            else:
                # Every request stores a new instance, into a fresh archive.
                count = args.warmup + args.requests * (args.rounds + (1 if args.profile else 0))
                with tempfile.TemporaryDirectory() as archive:
                    asyncio.run(measure(args, what, StowTargets(count), Path(archive)))


if __name__ == "__main__":
    main()
