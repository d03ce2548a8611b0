"""A minimal HTTP/1.1 keep-alive client and the load runner every scenario uses.

Why not httpx: on a 2-core machine the client competes with the servers for CPU, and httpx
spends a few hundred microseconds of it per request, so at thousands of requests/s the figures
would measure the client. This client does the least a keep-alive GET or POST needs
(Content-Length and chunked bodies) on asyncio streams, under uvloop when it is installed, and
treats every server alike: same connections, same requests, same parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

try:  # uvloop halves the client's CPU per request; plain asyncio still works without it.
    import uvloop as _uvloop

    uvloop: ModuleType | None = _uvloop
except ImportError:  # pragma: no cover - uvicorn[standard] installs it
    uvloop = None

T = TypeVar("T")

_READ_LIMIT = 1 << 20
_DISCARD_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request; `path` includes the query string."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(slots=True)
class Response:
    """Status, lower-cased headers and body (empty when the caller did not keep it)."""

    status: int
    headers: dict[str, str]
    body: bytes
    length: int


class Connection:
    """One persistent HTTP/1.1 connection; reconnects after the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def send(self, request: Request, *, keep_body: bool = True) -> Response:
        """Send `request` and read the whole answer; the body is kept only if asked."""
        reused = self._writer is not None
        try:
            return await self._exchange(request, keep_body)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            # A kept-alive connection the server closed while idle fails before any byte of
            # the answer: send once more on a new connection, as browsers and httpx do.
            partial = getattr(exc, "partial", b"")
            if not reused or partial:
                raise
            return await self._exchange(request, keep_body)

    async def _exchange(self, request: Request, keep_body: bool) -> Response:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, limit=_READ_LIMIT
            )
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        lines = [f"{request.method} {request.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in request.headers]
        if request.body or request.method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(request.body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if request.body:
            writer.write(request.body)
        try:
            await writer.drain()
            return await self._read_response(reader, keep_body)
        except BaseException:
            await self.close()
            raise

    async def _read_response(self, reader: asyncio.StreamReader, keep_body: bool) -> Response:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        pieces: list[bytes] = []
        length = 0
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    break
                chunk = await reader.readexactly(size)
                await reader.readexactly(2)
                length += size
                if keep_body:
                    pieces.append(chunk)
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            length = remaining
            if keep_body:
                pieces.append(await reader.readexactly(remaining))
            else:
                while remaining:
                    step = min(remaining, _DISCARD_CHUNK)
                    await reader.readexactly(step)
                    remaining -= step
        elif status not in (204, 304) and not 100 <= status < 200:
            body = await reader.read()
            length = len(body)
            pieces.append(body)
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, headers, b"".join(pieces), length)


@dataclass(frozen=True, slots=True)
class Job:
    """A request of a load run, how to judge its answer on a sample, and what it moves.

    `check` runs only on sampled requests (it may parse the body, which costs CPU the server
    would otherwise have); `units` counts what one request moves (instances for STOW).
    """

    request: Request
    check: Callable[[Response], bool] | None = None
    units: int = 1
    expect: frozenset[int] = frozenset({200})
    label: str = ""


@dataclass
class LoadResult:
    """What one load run measured; latencies and completion times are in seconds."""

    requests: int = 0
    units: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    completions: list[tuple[float, int]] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    errors: int = 0
    wrong: int = 0
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    stopped: str | None = None
    concurrency: int = 0
    by_label: dict[str, list[float]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def unit_rate(self) -> float:
        return self.units / self.seconds if self.seconds else 0.0

    def percentile_ms(self, fraction: float, label: str | None = None) -> float:
        """Nearest-rank percentile of the latencies (of one label's requests), in ms."""
        return percentile_ms(self.latencies if label is None else self.by_label[label], fraction)

    def mb_per_s(self, *, sent: bool = False) -> float:
        moved = self.bytes_sent if sent else self.bytes_received
        return moved / 1e6 / self.seconds if self.seconds else 0.0

    def note(self, problem: str) -> None:
        if len(self.problems) < 5:
            self.problems.append(problem)


def percentile_ms(latencies: list[float], fraction: float) -> float:
    """Nearest-rank percentile of latencies in seconds, in milliseconds (NaN when empty)."""
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1] * 1000


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on a fresh event loop (uvloop when available)."""
    factory = uvloop.new_event_loop if uvloop is not None else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


def run_load(
    host: str,
    port: int,
    jobs: Callable[[int], Job],
    *,
    concurrency: int,
    max_requests: int,
    seconds: float,
    check_every: int = 10,
    warmup: int = 0,
    stop: threading.Event | None = None,
    progress: Callable[[LoadResult, float], None] | None = None,
    progress_every: float = 30.0,
    min_requests: int = 0,
    on_start: Callable[[], None] | None = None,
) -> LoadResult:
    """Send `jobs(0)`, `jobs(1)`, ... from `concurrency` connections until a budget is spent.

    The run ends after `max_requests` requests, after `seconds`, or when `stop` is set (the
    memory guard). Requests in flight at the deadline complete and count. `warmup` requests
    are sent first and not measured, so connection set-up and first-touch caches are paid
    by every server alike outside the figures. `progress(result, elapsed)` is called every
    `progress_every` seconds during long runs. A server so slow that `seconds` sees fewer than
    `min_requests` requests gets up to three times `seconds` to reach them, so its figure
    rests on more than a couple of samples. `on_start()` is called once warm-up is over.
    """
    options = _Options(
        concurrency, max_requests, seconds, check_every, warmup, stop, min_requests, on_start
    )
    return run(_load(host, port, jobs, options, progress, progress_every))


@dataclass(frozen=True, slots=True)
class _Options:
    concurrency: int
    max_requests: int
    seconds: float
    check_every: int
    warmup: int
    stop: threading.Event | None
    min_requests: int
    on_start: Callable[[], None] | None


async def _load(
    host: str,
    port: int,
    jobs: Callable[[int], Job],
    options: _Options,
    progress: Callable[[LoadResult, float], None] | None,
    progress_every: float,
) -> LoadResult:
    concurrency, max_requests, check_every = (
        options.concurrency,
        options.max_requests,
        options.check_every,
    )
    warmup, stop = options.warmup, options.stop
    result = LoadResult(concurrency=concurrency)
    connections = [Connection(host, port) for _ in range(concurrency)]
    counter = iter(range(max_requests))
    if warmup:
        warm = iter(range(warmup))

        async def warm_worker(connection: Connection) -> None:
            for index in warm:
                try:
                    await connection.send(jobs(max_requests - 1 - index).request, keep_body=False)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    await connection.close()

        await asyncio.gather(*(warm_worker(c) for c in connections))
    if options.on_start is not None:
        options.on_start()
    start = time.perf_counter()
    deadline = start + options.seconds
    hard_deadline = start + 3 * options.seconds
    started = 0

    def over() -> bool:
        now = time.perf_counter()
        if stop is not None and stop.is_set():
            return True
        return now >= hard_deadline or (now >= deadline and started >= options.min_requests)

    async def worker(connection: Connection) -> None:
        nonlocal started
        for index in counter:
            if over():
                return
            started += 1
            job = jobs(index)
            # The first requests are always checked, so a slow server's few answers are too.
            sampled = job.check is not None and (index < 3 or index % check_every == 0)
            began = time.perf_counter()
            try:
                response = await connection.send(job.request, keep_body=sampled)
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as exc:
                result.errors += 1
                result.note(f"{job.request.method} {job.request.path[:80]}: {exc!r}")
                await connection.close()
                continue
            ended = time.perf_counter()
            if response.status not in job.expect:
                result.errors += 1
                result.note(f"{job.request.path[:80]}: HTTP {response.status}")
                continue
            result.requests += 1
            result.units += job.units
            result.latencies.append(ended - began)
            if job.label:
                result.by_label.setdefault(job.label, []).append(ended - began)
            result.completions.append((ended - start, job.units))
            result.bytes_sent += len(job.request.body)
            result.bytes_received += response.length
            if sampled and job.check is not None:
                result.checked += 1
                try:
                    ok = job.check(response)
                except Exception as exc:
                    ok = False
                    result.note(f"check of {job.request.path[:80]} raised {exc!r}")
                if not ok:
                    result.wrong += 1
                    result.note(f"wrong answer to {job.request.path[:100]}")

    async def reporter() -> None:
        while progress is not None:
            await asyncio.sleep(progress_every)
            progress(result, time.perf_counter() - start)

    ticker = asyncio.ensure_future(reporter())
    try:
        await asyncio.gather(*(worker(c) for c in connections))
    finally:
        ticker.cancel()
        result.seconds = time.perf_counter() - start
        for connection in connections:
            await connection.close()
    if stop is not None and stop.is_set():
        result.stopped = "memory guard"
    return result


def fetch(host: str, port: int, request: Request) -> Response:
    """One request on its own connection, for set-up and spot checks."""

    async def once() -> Response:
        connection = Connection(host, port)
        try:
            return await connection.send(request)
        finally:
            await connection.close()

    return run(once())
