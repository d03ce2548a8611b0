"""Helpers for the committer threads that answer waiting requests through futures."""

from __future__ import annotations

from concurrent.futures import Future, InvalidStateError


def settle(future: Future[None], error: BaseException | None) -> None:
    """Report a job's result; a future nobody waits for any more must not stop the thread."""
    if future.done():
        return
    try:
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass
