"""The statistics keeper never fails a store, and keeps its count when the index is away."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import create_engine

from dicomweb_server.index.statistics import PlannerStatistics


def test_an_unreachable_index_is_logged_and_maintained_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nothing listens on port 1: connecting is refused at once, a fault caused for real.
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    keeper = PlannerStatistics(engine, min_rows=5, vacuum_every=3)
    with caplog.at_level(logging.WARNING, logger="dicomweb_server.index.statistics"):
        keeper.stored(6)  # both due: VACUUM and ANALYZE
        keeper.wait(timeout=30)
    assert (keeper.runs, keeper.vacuums) == (0, 0)
    assert "could not reach the index" in caplog.text
    # The stores still count: the next one is due again at once.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dicomweb_server.index.statistics"):
        keeper.stored(0)
        keeper.wait(timeout=30)
    assert "could not reach the index" in caplog.text
    engine.dispose()
