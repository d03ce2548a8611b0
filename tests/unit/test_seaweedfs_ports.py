"""The test S3 service's ports: out of the kernel's ephemeral range, so a weed restarted on
the same ports cannot find one taken by an outgoing connection made while it was down."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests import seaweedfs


@pytest.fixture
def handed_out() -> Iterator[list[int]]:
    ports: list[int] = []
    yield ports
    seaweedfs._ports_in_use.difference_update(ports)


def test_ports_are_below_the_ephemeral_range_and_never_handed_out_twice(
    handed_out: list[int],
) -> None:
    first = seaweedfs._free_ports(8)
    handed_out.extend(first)
    second = seaweedfs._free_ports(8)
    handed_out.extend(second)

    low, _ = seaweedfs._ephemeral_range()
    share = seaweedfs._port_slice()
    assert len(set(first + second)) == 16
    assert all(1024 <= port < low and port in share for port in first + second)
    for port in first + second:  # each was free when chosen, and is again
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


def test_xdist_workers_get_disjoint_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    shares = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        shares.append(set(seaweedfs._port_slice()))
    assert all(len(share) > 1000 for share in shares)
    assert not (shares[0] & shares[1] or shares[1] & shares[2] or shares[0] & shares[2])


def test_a_port_someone_listens_on_is_skipped(
    monkeypatch: pytest.MonkeyPatch, handed_out: list[int]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with socket.socket() as spare_socket:
            spare_socket.bind(("127.0.0.1", 0))
            spare = spare_socket.getsockname()[1]
        monkeypatch.setattr(seaweedfs, "_port_slice", lambda: range(busy, busy + 1))
        with pytest.raises(seaweedfs.SeaweedFSError):
            seaweedfs._free_ports(1)
        monkeypatch.setattr(seaweedfs, "_port_slice", lambda: [busy, spare])
        chosen = seaweedfs._free_ports(1)
        handed_out.extend(chosen)
        assert chosen == [spare]
