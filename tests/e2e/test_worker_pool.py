"""``serve --workers N``: the supervisor hands each connection to the least busy worker.

With one shared listening socket, the first worker to wake accepts every connection that is
waiting, so a client opening a few keep-alive connections at once lands them all on one
worker. These tests open real connections and ask the kernel (through psutil) which worker
process holds each one.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.server import ServerProcess

pytestmark = pytest.mark.slow

READY = re.compile(r"supervisor: worker (\d+) ready")


def _ready_workers(server: ServerProcess) -> list[int]:
    return [int(pid) for pid in READY.findall(server.log())]


def _wait(predicate: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _live_workers(server: ServerProcess) -> set[int]:
    assert server.process is not None
    live = set()
    for child in psutil.Process(server.process.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                live.add(child.pid)
        except psutil.Error:  # exited (or a zombie not yet reaped)
            continue
    return live


def _ready_others(server: ServerProcess, exclude: frozenset[int] | set[int]) -> list[int]:
    """Pids of the workers that reported ready and are alive, none of `exclude`."""
    live = _live_workers(server)
    return [pid for pid in _ready_workers(server) if pid in live and pid not in exclude]


def _wait_ready(
    server: ServerProcess, count: int, exclude: frozenset[int] | set[int] = frozenset()
) -> list[int]:
    """Pids of `count` workers that reported ready (and are alive), none of `exclude`."""
    _wait(lambda: len(_ready_others(server, exclude)) >= count, what=f"{count} ready workers")
    return _ready_others(server, exclude)


class Connection:
    """One keep-alive HTTP/1.1 connection, spoken by hand so that it stays exactly one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def get(self, path: str = "/healthz") -> int:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n"
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(65536)
            assert chunk, "server closed the connection"
            head += chunk
        header, _, body = head.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", header).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += self.sock.recv(65536)
        return int(header.split()[1])

    def close(self) -> None:
        self.sock.close()


class _KeptInUse:
    """A check for `_wait` that also sends a request on each connection every second, so
    that none sits idle long enough for the server to close it."""

    def __init__(self, connections: list[Connection]) -> None:
        self.connections = connections
        self.last = time.monotonic()

    def __call__(self, *, force: bool = False) -> bool:
        if force or time.monotonic() - self.last >= 1.0:
            assert [c.get() for c in self.connections] == [200] * len(self.connections)
            self.last = time.monotonic()
        return True


def _holder(workers: set[int], server_port: int, client_port: int) -> int | None:
    """The worker process holding the server side of the connection from `client_port`."""
    for pid in workers:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for c in connections:
            if c.laddr and c.raddr and c.laddr.port == server_port and c.raddr.port == client_port:
                return pid
    return None


def _holders(server: ServerProcess, connections: list[Connection]) -> list[int | None]:
    workers = _live_workers(server)
    return [_holder(workers, server.port, c.local_port) for c in connections]


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", args=["--workers", "2", "--log-level", "info"])
    server.start()
    try:
        _wait_ready(server, 2)
        yield server
    finally:
        server.stop()


def test_connections_opened_together_are_spread_over_the_workers(pool: ServerProcess) -> None:
    connections = [Connection(pool.port) for _ in range(4)]
    fresh: list[Connection] = []
    try:
        assert [c.get() for c in connections] == [200] * 4
        holders = _holders(pool, connections)
        assert None not in holders
        counts = sorted(holders.count(pid) for pid in set(holders))
        assert counts == [2, 2], holders

        # Close both connections of one worker: it now has the fewest, so the next two
        # connections go to it, not to the busy one.
        idle = holders[0]
        for c in [c for c, pid in zip(connections, holders, strict=True) if pid == idle]:
            c.close()
        remaining = [c for c, pid in zip(connections, holders, strict=True) if pid != idle]
        _wait(
            lambda: idle not in _holders(pool, remaining) and not _closing(pool, idle),
            what="the closed connections to go",
        )
        time.sleep(0.5)  # the worker's report of the closes reaches the supervisor
        fresh = [Connection(pool.port) for _ in range(2)]
        assert [c.get() for c in fresh] == [200, 200]
        assert _holders(pool, fresh) == [idle, idle]
    finally:
        for c in connections + fresh:
            c.close()


def _closing(server: ServerProcess, pid: int | None) -> bool:
    """Whether worker `pid` still holds an established connection on the server port."""
    if pid is None:
        return False
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    return any(
        c.laddr and c.laddr.port == server.port and c.status == psutil.CONN_ESTABLISHED
        for c in connections
    )


def test_a_killed_worker_is_replaced_and_serves(pool: ServerProcess) -> None:
    before = _live_workers(pool)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # Meanwhile the survivor serves every request: nothing goes to the dead worker.
    for _ in range(20):
        assert httpx.get(f"{pool.url}/healthz", timeout=10).status_code == 200
    (replacement,) = _wait_ready(pool, 1, exclude=before)
    assert replacement not in before
    assert victim not in _live_workers(pool)

    connections = [Connection(pool.port) for _ in range(4)]
    try:
        assert [c.get() for c in connections] == [200] * 4
        holders = _holders(pool, connections)
        assert holders.count(replacement) == 2, holders
    finally:
        for c in connections:
            c.close()


def test_sighup_replaces_every_worker_without_refusing_a_request(pool: ServerProcess) -> None:
    assert pool.process is not None
    before = _live_workers(pool)
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def requests() -> None:
        nonlocal served
        while not stop.is_set():
            try:
                # A new connection each time: old workers close idle keep-alive ones.
                response = httpx.get(
                    f"{pool.url}/healthz", timeout=10, headers={"Connection": "close"}
                )
                if response.status_code != 200:
                    failures.append(f"status {response.status_code}")
                served += 1
            except httpx.HTTPError as error:
                failures.append(repr(error))

    client = threading.Thread(target=requests)
    client.start()
    try:
        os.kill(pool.process.pid, signal.SIGHUP)
        _wait_ready(pool, 2, exclude=before)
        _wait(lambda: not (_live_workers(pool) & before), what="the old workers to stop")
    finally:
        stop.set()
        client.join()
    assert failures == []
    assert served > 0
    assert len(_live_workers(pool)) == 2


def test_balance_kernel_keeps_uvicorn_shared_socket(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data", args=["--workers", "2", "--balance", "kernel", "--log-level", "info"]
    )
    server.start()
    try:
        assert httpx.get(f"{server.root}/studies", timeout=10).status_code in (200, 204)
        _wait(lambda: len(_live_workers(server)) == 2, what="two workers")
        assert not _ready_workers(server)  # no hand-off supervisor in this mode
    finally:
        server.stop()


def test_a_stopped_worker_gets_no_connections_and_is_replaced(tmp_path: Path) -> None:
    """SIGSTOP stands for a worker whose event loop hangs: it stops answering its supervisor.
    Quiet for a few seconds it gets no new connection; quiet for the time-out it is killed
    and a new worker takes its place."""
    server = ServerProcess(
        tmp_path / "data",
        env={"DICOMWEB_WORKER_TIMEOUT_SECONDS": "6"},
        args=["--workers", "2", "--log-level", "info"],
    )
    server.start()
    connections: list[Connection] = []
    try:
        before = set(_wait_ready(server, 2))
        stopped = min(before)
        survivor = max(before)
        os.kill(stopped, signal.SIGSTOP)
        time.sleep(4)  # past the quiet threshold (half the time-out), before the time-out
        connections = [Connection(server.port) for _ in range(4)]
        assert [c.get() for c in connections] == [200] * 4
        assert _holders(server, connections) == [survivor] * 4

        # The four are kept in use while the kill and the replacement's start-up take their
        # time: idle for uvicorn's keep-alive time-out (5 s), the survivor would close them,
        # and then hold none on a slow machine.
        in_use = _KeptInUse(connections)
        _wait(
            lambda: in_use() and stopped not in _live_workers(server), timeout=30, what="the kill"
        )
        assert "has not answered for" in server.log()
        _wait(lambda: in_use() and _ready_others(server, before), what="a replacement")
        (replacement,) = _ready_others(server, before)
        assert in_use(force=True)
        fresh = [Connection(server.port) for _ in range(2)]
        connections += fresh
        assert [c.get() for c in fresh] == [200, 200]
        # The survivor holds four: both new connections go to the replacement.
        assert _holders(server, fresh) == [replacement, replacement]
        assert _holders(server, connections[:4]) == [survivor] * 4
    finally:
        for c in connections:
            c.close()
        server.stop()
