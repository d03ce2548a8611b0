"""The server's garbage-collector settings after start-up."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from dicomweb_server.heap import THRESHOLDS, settle_after_startup


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_startup_heap_is_frozen_and_collections_are_rarer(restored_gc: None) -> None:
    survivor = [object() for _ in range(10)]  # live objects that start-up leaves behind
    settle_after_startup()
    assert gc.get_freeze_count() >= len(survivor)
    assert gc.get_threshold() == THRESHOLDS
    assert THRESHOLDS[0] > 700  # rarer than CPython's default young collections


def test_cycles_made_after_startup_are_still_collected(restored_gc: None) -> None:
    settle_after_startup()

    class Node:
        partner: object = None

    first, second = Node(), Node()
    first.partner, second.partner = second, first
    del first, second
    assert gc.collect() >= 2
