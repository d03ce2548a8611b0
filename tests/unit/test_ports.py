"""Test servers' ports come from outside the kernel's ephemeral range, so a server restarted
on the same port cannot find it taken by an outgoing connection made while it was down."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests import ports


@pytest.fixture
def lent() -> Iterator[list[int]]:
    handed_out: list[int] = []
    yield handed_out
    ports.give_back(handed_out)


def test_ports_are_outside_the_ephemeral_range_and_never_lent_twice(lent: list[int]) -> None:
    first = ports.free_ports(8)
    lent.extend(first)
    second = ports.free_ports(8)
    lent.extend(second)

    low, high = ports.ephemeral_range()
    mine = set(ports.share())
    assert len(set(first + second)) == 16
    assert all(not low <= port <= high and port in mine for port in first + second)
    for port in first + second:  # each was free when chosen, and is again
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


def test_a_port_given_back_may_be_lent_again(
    monkeypatch: pytest.MonkeyPatch, lent: list[int]
) -> None:
    (only,) = ports.free_ports(1)
    lent.append(only)
    monkeypatch.setattr(ports, "share", lambda: [only])
    with pytest.raises(RuntimeError, match="fewer than 1 free ports"):
        ports.free_ports(1)
    ports.give_back([only])
    assert ports.free_ports(1) == [only]


def test_xdist_workers_get_disjoint_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    shares = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        shares.append(set(ports.share()))
    assert all(len(share) > 1000 for share in shares)
    assert not (shares[0] & shares[1] or shares[1] & shares[2] or shares[0] & shares[2])


def test_a_port_someone_listens_on_is_skipped(
    monkeypatch: pytest.MonkeyPatch, lent: list[int]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with socket.socket() as spare_socket:
            spare_socket.bind(("127.0.0.1", 0))
            spare = spare_socket.getsockname()[1]
        monkeypatch.setattr(ports, "share", lambda: [busy])
        with pytest.raises(RuntimeError):
            ports.free_ports(1)
        monkeypatch.setattr(ports, "share", lambda: [busy, spare])
        chosen = ports.free_ports(1)
        lent.extend(chosen)
        assert chosen == [spare]
