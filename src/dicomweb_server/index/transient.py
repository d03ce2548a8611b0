"""Retrying index transactions that lost a race, rather than failing the request.

Several workers writing the same studies can meet in a deadlock or, at stricter isolation, a
serialization failure. PostgreSQL then aborts one transaction on purpose and expects it to
be run again; doing so here keeps such a collision from ever reaching a client as a 503.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

T = TypeVar("T")

#: SQLSTATEs of the aborts PostgreSQL asks the client to retry: deadlock, serialization.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def is_retryable(exc: BaseException) -> bool:
    return (
        isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES
    )


def retrying(work: Callable[[], T], *, attempts: int = 6) -> T:
    """Run ``work`` (one whole transaction, re-runnable from scratch) until it sticks."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except DBAPIError as exc:
            if attempt == attempts or not is_retryable(exc):
                raise
            # Jittered back-off, so the transactions that collided do not collide again.
            time.sleep(random.uniform(0, 0.01 * 2**attempt))
    raise AssertionError("unreachable")
