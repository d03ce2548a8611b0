"""The append-only audit store: durability, appending only, filtering, failure."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from dicomweb_server.audit import store as store_module
from dicomweb_server.audit.store import (
    AuditFilter,
    AuditStore,
    AuditUnavailable,
    audit_files,
    iter_lines,
    read_records,
)


def line(**fields: object) -> bytes:
    record = {
        "time": "2024-05-01T12:00:00+00:00",
        "event": "110104",
        "user": None,
        "patients": [],
        "studies": [],
        **fields,
    }
    return orjson.dumps(record) + b"\n"


def test_records_are_appended_never_rewritten(tmp_path: Path) -> None:
    first = AuditStore(tmp_path)
    first.append_sync([line(n=1), line(n=2)])
    first.close()
    [path] = audit_files(tmp_path)
    before = path.read_bytes()
    assert os.stat(path).st_mode & 0o777 == 0o600

    # A new process (a new store) continues the same file after what is there.
    second = AuditStore(tmp_path)
    asyncio.run(second.append([line(n=3)]))
    second.close()
    after = path.read_bytes()
    assert after.startswith(before)
    assert [record["n"] for record in read_records(tmp_path)] == [1, 2, 3]


def test_concurrent_requests_share_flushes_and_all_records_land(tmp_path: Path) -> None:
    store = AuditStore(tmp_path)
    flushes = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal flushes
        flushes += 1
        real_fsync(fd)

    async def main() -> None:
        await asyncio.gather(*(store.append([line(n=n)]) for n in range(200)))

    store_module.os.fsync = counting_fsync  # type: ignore[attr-defined]
    try:
        asyncio.run(main())
    finally:
        store_module.os.fsync = real_fsync  # type: ignore[attr-defined]
        store.close()
    assert sorted(record["n"] for record in read_records(tmp_path)) == list(range(200))
    # Every record was flushed before its append returned, with fewer flushes than records
    # (the first batch alone may be one record; the rest queue up behind it).
    assert 1 <= flushes < 200


def test_two_processes_appending_to_one_file_never_interleave(tmp_path: Path) -> None:
    stores = [AuditStore(tmp_path), AuditStore(tmp_path)]  # two descriptors, as two processes
    big = "x" * 200_000

    def write(index: int) -> None:
        for n in range(20):
            stores[index].append_sync([line(writer=index, n=n, padding=big)])

    threads = [threading.Thread(target=write, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for item in stores:
        item.close()
    records = read_records(tmp_path)
    assert len(records) == 40
    for writer in (0, 1):
        assert [r["n"] for r in records if r["writer"] == writer] == list(range(20))


def test_a_torn_line_from_a_crash_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    store = AuditStore(tmp_path)
    store.append_sync([line(n=1)])
    [path] = audit_files(tmp_path)
    with path.open("ab") as handle:  # a crash in the middle of a write
        handle.write(b'{"time":"2024-05-01T12:00:00+00:00","n":')
    store.append_sync([line(n=2)])
    store.close()
    assert [record["n"] for record in read_records(tmp_path)] == [1, 2]
    assert path.read_bytes().count(b"\n") == 3  # the torn line stays, on its own line


def test_a_line_still_being_written_is_not_read(tmp_path: Path) -> None:
    store = AuditStore(tmp_path)
    store.append_sync([line(n=1)])
    store.close()
    [path] = audit_files(tmp_path)
    with path.open("ab") as handle:
        handle.write(line(n=2)[:-1])  # no newline yet
    assert [record["n"] for record in read_records(tmp_path)] == [1]


def test_filters(tmp_path: Path) -> None:
    # Each day's records in that day's file, as the store writes them.
    (tmp_path / "audit-2024-05-01.jsonl").write_bytes(
        line(
            n=1, user="alice", patients=["P1"], studies=["1.2.3"], time="2024-05-01T08:00:00+00:00"
        )
    )
    (tmp_path / "audit-2024-05-02.jsonl").write_bytes(
        line(n=2, user="bob", patients=["P2"], studies=["1.2.4"], time="2024-05-02T08:00:00+00:00")
    )
    (tmp_path / "audit-2024-05-03.jsonl").write_bytes(
        line(
            n=3,
            user="alice",
            patients=["P2"],
            studies=["1.2.4"],
            event="110112",
            time="2024-05-03T08:00:00+02:00",
        )
    )

    def numbers(**criteria: object) -> list[int]:
        return [r["n"] for r in read_records(tmp_path, AuditFilter(**criteria))]  # type: ignore[arg-type]

    assert numbers() == [1, 2, 3]
    assert numbers(user="alice") == [1, 3]
    assert numbers(patient="P2") == [2, 3]
    assert numbers(study="1.2.3") == [1]
    assert numbers(event="110112") == [3]
    assert numbers(user="alice", patient="P2") == [3]
    since = datetime(2024, 5, 2, tzinfo=UTC)
    until = datetime(2024, 5, 3, 6, 30, tzinfo=UTC)
    assert numbers(since=since) == [2, 3]
    assert numbers(until=until) == [1, 2, 3]  # 08:00+02:00 is 06:00 UTC
    assert numbers(since=since, until=datetime(2024, 5, 3, 5, tzinfo=UTC)) == [2]


def test_day_files_outside_the_span_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "audit-2024-01-01.jsonl").write_bytes(line(n=1, time="2024-01-01T10:00:00+00:00"))
    (tmp_path / "audit-2024-03-01.jsonl").write_bytes(b"not json at all\n")
    (tmp_path / "audit-2024-06-01.jsonl").write_bytes(line(n=3, time="2024-06-01T10:00:00+00:00"))
    criteria = AuditFilter(since=datetime(2024, 5, 1, tzinfo=UTC))
    assert [orjson.loads(item)["n"] for item in iter_lines(tmp_path, criteria)] == [3]
    # Without a span every file is read; the unreadable line is skipped.
    assert [orjson.loads(item)["n"] for item in iter_lines(tmp_path)] == [1, 3]


def test_a_failed_write_is_reported_and_refuses_for_a_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AuditStore(tmp_path)
    store.append_sync([line(n=1)])

    def disk_full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.os, "write", disk_full)
    with pytest.raises(AuditUnavailable, match="No space left"):
        asyncio.run(store.append([line(n=2)]))
    assert not store.available
    monkeypatch.undo()
    monkeypatch.setattr(store_module, "RETRY_AFTER_FAILURE", 0.0)
    assert store.available
    asyncio.run(store.append([line(n=3)]))
    store.close()
    assert [record["n"] for record in read_records(tmp_path)] == [1, 3]


def test_a_closed_store_refuses(tmp_path: Path) -> None:
    store = AuditStore(tmp_path)
    store.close()
    with pytest.raises(AuditUnavailable):
        asyncio.run(store.append([line(n=1)]))


def test_a_waiter_that_gave_up_does_not_stop_the_writer(tmp_path: Path) -> None:
    store = AuditStore(tmp_path)
    written = threading.Event()
    release = threading.Event()
    real_write = store._write

    def slow_write(lines: Sequence[bytes]) -> None:
        release.wait(5)
        real_write(lines)
        written.set()

    store._write = slow_write  # type: ignore[method-assign]

    async def main() -> None:
        waiter = asyncio.ensure_future(store.append([line(n=1)]))
        await asyncio.sleep(0.05)
        waiter.cancel()  # the request went away while its record was being written
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert written.wait(5)
        await store.append([line(n=2)])

    asyncio.run(main())
    store.close()
    # The record of a request that went away is still written: it was accepted.
    assert [record["n"] for record in read_records(tmp_path)] == [1, 2]


def test_waiters_on_several_event_loops_are_all_answered(tmp_path: Path) -> None:
    store = AuditStore(tmp_path)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        async def main() -> None:
            await asyncio.gather(*(store.append([line(n=index * 100 + n)]) for n in range(20)))

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    store.close()
    assert not errors
    assert len(read_records(tmp_path)) == 60
