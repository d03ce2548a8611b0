"""The event loop's index look-ups stop at their time budget, and only then."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from dicomweb_server.index.budget import BudgetExceeded, index_budget
from dicomweb_server.index.database import create_index_engine

#: Counts to `n` in SQLite's virtual machine: tens of milliseconds for a million.
COUNT = (
    "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < :n) "
    "SELECT max(n) FROM c"
)


def test_a_statement_over_its_budget_is_stopped_and_the_connection_stays_usable(
    tmp_path: Path,
) -> None:
    engine = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite'}", busy_timeout_ms=0)
    try:
        with engine.connect() as connection:
            with pytest.raises(BudgetExceeded), index_budget(connection, 0.001):
                connection.execute(text(COUNT), {"n": 5_000_000}).scalar()
            # Within its budget a statement runs as ever; outside the block, with no limit.
            with index_budget(connection, 10.0):
                assert connection.execute(text(COUNT), {"n": 1000}).scalar() == 1000
            assert connection.execute(text(COUNT), {"n": 1_000_000}).scalar() == 1_000_000
            # A failure that is not the budget's stays what it is.
            with (
                pytest.raises(Exception, match="no such table") as raised,
                index_budget(connection, 10.0),
            ):
                connection.execute(text("SELECT * FROM nowhere"))
            assert not isinstance(raised.value, BudgetExceeded)
    finally:
        engine.dispose()
