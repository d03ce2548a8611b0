"""Free loopback ports for test servers, chosen outside the kernel's ephemeral range.

A port from ``bind(("127.0.0.1", 0))`` is an ephemeral one. Any outgoing connection on the
machine may be given it as its source port the moment its server stops, and a test that
restarts a server on the same port then fails with "address already in use" (seen in CI
with the test S3 service, and beside a benchmark with the syslog collector). No outgoing
connection and no port-0 bind takes a port outside that range. Under pytest-xdist each
worker process chooses from a share of its own, so two workers never race for one port,
and a process never hands out a port twice while it is lent.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path

#: Ports this process has handed out and not yet given back.
_lent: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def share() -> Sequence[int]:
    """The ports this process may hand out."""
    low, high = ephemeral_range()
    outside = [*range(15000, max(15000, low)), *range(max(high + 1, 15000), 65536)]
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = len(outside) // max(count, 1)
    if size < 64:  # an odd kernel set-up: share the whole range and rely on the bind check
        return outside or range(1024, 65536)
    return outside[index * size : (index + 1) * size]


def free_ports(count: int) -> list[int]:
    """Distinct free ports (held open while choosing, so none repeats), lent until
    :func:`give_back`."""
    candidates = [port for port in share() if port not in _lent]
    secrets.SystemRandom().shuffle(candidates)
    sockets: list[socket.socket] = []
    try:
        for port in candidates:
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
            if len(sockets) == count:
                break
        else:
            raise RuntimeError(f"fewer than {count} free ports outside the ephemeral range")
        ports = [int(sock.getsockname()[1]) for sock in sockets]
        _lent.update(ports)
        return ports
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def give_back(ports: Iterable[int]) -> None:
    """Ports no server of this process will start on again."""
    _lent.difference_update(ports)
