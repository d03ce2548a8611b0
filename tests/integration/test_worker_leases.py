"""Worker leases: leftovers of dead workers are cleaned up, those of live workers never are."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from dicomweb_server.index import leases, repository
from dicomweb_server.index.models import BlobIntent, Instance, Worker
from dicomweb_server.services import store
from dicomweb_server.services.archive import Archive
from dicomweb_server.services.leases import reap
from dicomweb_server.settings import Settings
from dicomweb_server.storage import StagedBlob
from tests.dicom_files import bundled_bytes, with_new_uids


def _open(tmp_path: Path, database_url: str, name: str) -> Archive:
    # Two archives on one index and one store: two worker processes, as far as the index
    # and the store can tell.
    settings = Settings(
        data_dir=tmp_path / name,
        database_url=database_url,
        storage_path=tmp_path / "blobs",
        audit_dir=tmp_path / name / "audit",
    )
    return Archive.open(settings)


def _stage(archive: Archive, data: bytes) -> StagedBlob:
    writer = archive.blobs.staging_writer()
    writer.write(data)
    return writer.finish()


def _intent_count(archive: Archive) -> int:
    with archive.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(BlobIntent)) or 0)


def _blob_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and ".staging" not in p.parts]


@pytest.fixture
def pair(tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    first = _open(tmp_path, database_url, "one")
    second = _open(tmp_path, database_url, "two")
    yield first, second
    second.close()
    first.close()


def test_each_archive_holds_a_lease_and_drops_it_on_close(
    tmp_path: Path, database_url: str
) -> None:
    archive = _open(tmp_path, database_url, "solo")
    with archive.sessions() as session:
        rows = leases.workers(session)
    assert [row.id for row in rows] == [archive.worker_id]
    assert abs(rows[0].heartbeat - time.time()) < 30
    archive.close()
    other = _open(tmp_path, database_url, "after")
    with other.sessions() as session:
        assert [row.id for row in leases.workers(session)] == [other.worker_id]
    other.close()


def test_live_workers_intents_are_left_alone(pair: tuple[Archive, Archive]) -> None:
    first, second = pair
    staged = _stage(first, b"in flight")
    first.blobs.commit(staged, "aa/bb/in-flight")
    with first.write_sessions.begin() as session:
        repository.add_intents(session, ["aa/bb/in-flight"], first.worker_id)
    result = reap(second.write_sessions, second.blobs, 60)
    assert result.intents == 0
    assert first.blobs.exists("aa/bb/in-flight")
    assert _intent_count(first) == 1


def test_lapsed_workers_intents_are_resolved(pair: tuple[Archive, Archive]) -> None:
    first, second = pair
    for key in ("aa/bb/orphan", "aa/bb/kept"):
        first.blobs.commit(_stage(first, key.encode()), key)
    with first.write_sessions.begin() as session:
        repository.add_intents(session, ["aa/bb/orphan", "aa/bb/kept"], first.worker_id)
    # "kept" is referenced by a stored instance: its blob must survive the clean-up.
    parsed_uid = _store_one(second)
    with second.write_sessions.begin() as session:
        session.execute(
            update(Instance)
            .where(Instance.sop_instance_uid == parsed_uid)
            .values(blob_key="aa/bb/kept")
        )
    first.lease.stop()  # drops its row: like a worker whose lease ran out
    result = reap(second.write_sessions, second.blobs, 60)
    assert (result.intents, result.orphan_blobs) == (2, 1)
    assert not first.blobs.exists("aa/bb/orphan")
    assert first.blobs.exists("aa/bb/kept")
    assert _intent_count(second) == 0


def test_stale_heartbeat_counts_as_gone(pair: tuple[Archive, Archive]) -> None:
    first, second = pair
    first.blobs.commit(_stage(first, b"x"), "aa/bb/stale")
    with first.write_sessions.begin() as session:
        repository.add_intents(session, ["aa/bb/stale"], first.worker_id)
        session.execute(
            update(Worker).where(Worker.id == first.worker_id).values(heartbeat=time.time() - 120)
        )
    result = reap(second.write_sessions, second.blobs, 60)
    assert (result.intents, result.orphan_blobs, result.workers) == (1, 1, 1)
    with second.sessions() as session:
        assert first.worker_id not in {row.id for row in leases.workers(session)}
    # The lapsed worker notices at its next renewal and registers again.
    first.lease.renew()
    with second.sessions() as session:
        assert first.worker_id in {row.id for row in leases.workers(session)}


def test_a_dead_process_on_this_host_is_gone_at_once(pair: tuple[Archive, Archive]) -> None:
    first, second = pair
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(child.stdout)
    with first.write_sessions.begin() as session:
        leases.register(session, "f" * 32, socket.gethostname(), dead_pid, time.time())
        repository.add_intents(session, ["aa/bb/dead"], "f" * 32)
    first.blobs.commit(_stage(first, b"dead"), "aa/bb/dead")
    result = reap(second.write_sessions, second.blobs, 60)
    assert (result.intents, result.orphan_blobs, result.workers) == (1, 1, 1)
    assert not first.blobs.exists("aa/bb/dead")


def _store_one(archive: Archive) -> str:
    data = with_new_uids(bundled_bytes("CT_small.dcm"))
    part = store.prepare(archive, _stage(archive, data), None)
    store.commit_batch(archive, [part])
    assert part.outcome.stored, part.outcome.message
    assert part.outcome.sop_instance_uid is not None
    return part.outcome.sop_instance_uid


class _ReapDuringCommit:
    """Lets another worker judge the committing one dead between its blob and row commits.

    The lapse itself cannot be made to happen on cue (it takes a stalled process), so the
    heartbeat is set back and the other worker's real clean-up runs at the worst moment.
    """

    def __init__(self, committing: Archive, other: Archive) -> None:
        self.committing, self.other = committing, other
        self.inner_commit = committing.blobs.commit_all

    def __call__(self, items: Sequence[tuple[StagedBlob, str]], *, synced: bool = False) -> None:
        self.inner_commit(items, synced=synced)
        with self.committing.write_sessions.begin() as session:
            session.execute(
                update(Worker)
                .where(Worker.id == self.committing.worker_id)
                .values(heartbeat=time.time() - 600)
            )
        reap(self.other.write_sessions, self.other.blobs, 60)


def test_a_commit_whose_lease_lapsed_stores_nothing(
    pair: tuple[Archive, Archive], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = pair
    monkeypatch.setattr(first.blobs, "commit_all", _ReapDuringCommit(first, second))
    data = with_new_uids(bundled_bytes("CT_small.dcm"))
    part = store.prepare(first, _stage(first, data), None)
    with pytest.raises(store.StorageError):
        store.commit_batch(first, [part])
    monkeypatch.undo()
    with first.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
    assert _intent_count(first) == 0
    assert _blob_files(tmp_path / "blobs") == []
    # Sent again, it is stored normally.
    first.lease.renew()
    again = store.prepare(first, _stage(first, data), None)
    store.commit_batch(first, [again])
    assert again.outcome.stored and not again.outcome.already_present
    assert len(_blob_files(tmp_path / "blobs")) == 1


def test_staging_of_a_dead_process_is_cleared_and_a_live_ones_kept(
    pair: tuple[Archive, Archive],
) -> None:
    first, second = pair
    live = _stage(first, b"still arriving")
    script = (
        "import sys; from pathlib import Path;"
        "from dicomweb_server.storage import FilesystemBlobStore;"
        "store = FilesystemBlobStore(Path(sys.argv[1])); store.claim_staging('deadbeef');"
        "w = store.staging_writer(); w.write(b'abandoned'); w.finish()"
    )
    subprocess.run([sys.executable, "-c", script, str(first.blobs.root)], check=True)
    abandoned = list((first.blobs.staging_dir / "deadbeef").glob("*.part"))
    assert len(abandoned) == 1
    assert second.blobs.clear_staging() == 1
    assert not (first.blobs.staging_dir / "deadbeef").exists()
    assert live.path.exists()
