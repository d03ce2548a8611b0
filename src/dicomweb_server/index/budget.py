"""A time budget for SQLite statements run on the event loop.

The event loop makes cheap index look-ups itself (a thread hand-off costs more than they
do), but no look-up may hold it up for long: SQLite calls a progress handler every few
hundred virtual-machine steps, and one that says stop makes the statement fail with
"interrupted", which :func:`index_budget` turns into :class:`BudgetExceeded` so that the
caller runs the look-up again in a worker thread, where it may take as long as it needs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

#: Virtual-machine steps between two looks at the clock.
_STEPS = 500


class BudgetExceeded(Exception):
    """The look-up ran longer than its budget and was stopped; nothing was changed."""


@contextmanager
def index_budget(connection: Connection, seconds: float) -> Iterator[None]:
    """Stop the SQLite statements run on `connection` inside the block after `seconds`."""
    driver = connection.connection.driver_connection
    if not isinstance(driver, sqlite3.Connection):
        yield
        return
    deadline = time.perf_counter() + seconds
    stopped = False

    def over() -> int:
        nonlocal stopped
        stopped = time.perf_counter() > deadline
        return 1 if stopped else 0

    driver.set_progress_handler(over, _STEPS)
    try:
        yield
    except OperationalError as exc:
        if stopped and isinstance(exc.orig, sqlite3.OperationalError):
            raise BudgetExceeded from exc
        raise
    except sqlite3.OperationalError as exc:  # statements sent on the driver's own cursor
        if stopped:
            raise BudgetExceeded from exc
        raise
    finally:
        driver.set_progress_handler(None, 0)
