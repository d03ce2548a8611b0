"""Delete studies, series and instances (not in PS3.18; expected of every archive).

Rows go first, with their blob keys recorded as intents in the same transaction; then the
blobs; then the intents. A crash in between leaves intents that the surviving workers resolve
(:mod:`dicomweb_server.services.leases`).
"""

from __future__ import annotations

from dicomweb_server.errors import NotFound
from dicomweb_server.index import lookup, repository
from dicomweb_server.index.transient import retrying
from dicomweb_server.services.archive import Archive


def delete(
    archive: Archive, study: str, series: str | None = None, instance: str | None = None
) -> int:
    """Delete what the path names; returns the number of instances removed."""

    def remove_rows() -> tuple[int, list[str]]:
        with archive.write_sessions.begin() as session:
            repository.lock_study(session, study)
            refs = lookup.find_instances(session, study, series, instance)
            if not refs:
                what = instance or series or study
                raise NotFound(f"{what} is not stored")
            pks = [ref.pk for ref in refs]
            return len(refs), repository.delete_instances(session, pks, archive.worker_id)

    count, keys = retrying(remove_rows)
    for key in keys:
        archive.blobs.delete(key)
    with archive.write_sessions.begin() as session:
        repository.remove_intents(session, keys)
    return count
