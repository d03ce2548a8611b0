"""Worker registrations and the intents they own: the index side of worker leases.

See :mod:`dicomweb_server.services.leases` for why leases exist and who calls these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.orm import Session

from dicomweb_server.index.models import BlobIntent, Worker


@dataclass(frozen=True, slots=True)
class WorkerRow:
    id: str
    hostname: str
    pid: int
    heartbeat: float


def register(session: Session, worker_id: str, hostname: str, pid: int, now: float) -> None:
    session.execute(insert(Worker).values(id=worker_id, hostname=hostname, pid=pid, heartbeat=now))


def renew(session: Session, worker_id: str, now: float) -> bool:
    """Renew a lease; False when the row is gone (another process judged this one dead)."""
    result = session.execute(update(Worker).where(Worker.id == worker_id).values(heartbeat=now))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def deregister(session: Session, worker_id: str) -> None:
    session.execute(delete(Worker).where(Worker.id == worker_id))


def workers(session: Session) -> list[WorkerRow]:
    rows = session.execute(select(Worker.id, Worker.hostname, Worker.pid, Worker.heartbeat))
    return [WorkerRow(row[0], row[1], int(row[2]), float(row[3])) for row in rows]


def claim_orphaned_intents(session: Session, live: Sequence[str]) -> list[tuple[int, str]]:
    """Lock and return (pk, blob key) of intents whose owner is not among ``live`` workers.

    On PostgreSQL the rows are locked (skipping rows a committing worker holds), so a worker
    whose final transaction is removing its own intents is never raced: either it removed
    them first and they are not returned here, or its removal waits for this transaction and
    then finds them gone, which makes it fail rather than reference a deleted blob.
    """
    query = select(BlobIntent.pk, BlobIntent.blob_key).where(
        or_(BlobIntent.owner.is_(None), BlobIntent.owner.not_in(list(live)))
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [(int(row[0]), str(row[1])) for row in session.execute(query)]


def remove_intents_by_pk(session: Session, pks: Sequence[int]) -> None:
    for start in range(0, len(pks), 5000):
        session.execute(delete(BlobIntent).where(BlobIntent.pk.in_(pks[start : start + 5000])))


def remove_workers(session: Session, worker_ids: Sequence[str]) -> None:
    if worker_ids:
        session.execute(delete(Worker).where(Worker.id.in_(list(worker_ids))))
