"""The intents queue on PostgreSQL: removals stay on the index, and the keeper vacuums it.

Every store adds an intent per instance and removes it again, so ``blob_intents`` is nearly
empty at any moment while its pages and index hold the dead rows of every store since the
last vacuum. These tests build that state for real (inserted and deleted rows, statistics
gathered from the nearly empty table) and look at what PostgreSQL does with it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from dicomweb_server.index import repository
from dicomweb_server.index.database import create_index_engine
from dicomweb_server.index.statistics import PlannerStatistics
from tests.conftest import POSTGRES_URL
from tests.integration.plans import plan_nodes

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not POSTGRES_URL, reason="DICOMWEB_TEST_DATABASE_URL is not set"),
]

DEAD_ROWS = 60_000
BATCH = 50
IN_FLIGHT = 20


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    if not database_url.startswith("postgresql"):
        pytest.skip("the planner and VACUUM are PostgreSQL's")
    engine = create_index_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _churn(engine: Engine, rows: int) -> None:
    """Add and remove `rows` intents, as that many stores would, leaving dead rows."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO blob_intents (blob_key, owner, created_at) "
                "SELECT md5(n::text) || '/' || n, 'gone', now() FROM generate_series(1, :rows) n"
            ),
            {"rows": rows},
        )
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM blob_intents"))


def test_removing_intents_uses_the_index_of_a_churned_queue(engine: Engine) -> None:
    _churn(engine, DEAD_ROWS)
    with engine.begin() as connection:
        # Statistics of a queue as ANALYZE finds it: a few stores in flight.
        repository.add_intents(connection, [f"in-flight/{n}" for n in range(IN_FLIGHT)], "busy")
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE blob_intents")
    keys = [f"live/{number}" for number in range(BATCH)]
    with engine.begin() as connection:
        repository.add_intents(connection, keys, "live")
    with engine.connect() as connection, connection.begin():
        # The plans PostgreSQL executes, whoever sends the statements: auto_explain reports
        # each one to this session as a notice.
        notices: list[str] = []
        driver = connection.connection.driver_connection
        assert driver is not None

        def heard(diagnostic: Any) -> None:
            notices.append(diagnostic.message_primary or "")

        driver.add_notice_handler(heard)
        for statement in (
            "LOAD 'auto_explain'",
            "SET LOCAL auto_explain.log_min_duration = 0",
            "SET LOCAL auto_explain.log_format = 'json'",
            "SET LOCAL auto_explain.log_level = 'notice'",
        ):
            connection.exec_driver_sql(statement)
        try:
            removed = repository.remove_intents(connection, keys)
        finally:
            driver.remove_notice_handler(heard)
        # Only for the removal: the rest of the transaction plans as configured.
        assert connection.scalar(text("SELECT current_setting('enable_seqscan')")) == "on"
    plans = [
        explained["Plan"]
        for explained in (json.loads(notice.partition("plan:")[2]) for notice in notices)
        if explained["Query Text"].lstrip().upper().startswith("DELETE FROM BLOB_INTENTS")
    ]
    assert removed == BATCH
    assert plans, "the removal was not seen"
    for plan in plans:
        scans = {node["Node Type"] for node in plan_nodes(plan)}
        assert "Seq Scan" not in scans, plan
        assert {"Index Scan", "Bitmap Index Scan"} & scans, plan
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM blob_intents")) == IN_FLIGHT


def _vacuumed(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(
            connection.scalars(
                text(
                    "SELECT relname FROM pg_stat_user_tables WHERE schemaname = "
                    "current_schema() AND vacuum_count > 0"
                )
            )
        )


def test_the_keeper_vacuums_the_churned_tables(engine: Engine) -> None:
    _churn(engine, 1_000)
    keeper = PlannerStatistics(engine, min_rows=10**9, vacuum_every=1_000)
    keeper.stored(999)
    keeper.wait(timeout=30)
    assert keeper.vacuums == 0 and keeper.runs == 0  # not due yet
    keeper.stored(1)
    keeper.wait(timeout=30)
    assert keeper.vacuums == 1
    assert keeper.runs == 0  # ANALYZE has its own threshold
    deadline = time.monotonic() + 10
    while not {"blob_intents", "workers"} <= _vacuumed(engine):
        assert time.monotonic() < deadline, _vacuumed(engine)
        time.sleep(0.2)
