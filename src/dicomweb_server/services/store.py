"""Store instances (STOW-RS, PS3.18 10.5, and bulk import) with two-phase durability.

Every instance goes the same way, whether it came in a STOW-RS request or from
``dicomweb-server import``:

1. its bytes are written to a staging file while being hashed;
2. the staging file is parsed once and everything later reads need is computed
   (:func:`dicomweb_server.dicom.parse.parse_instance`); meanwhile a filesystem store
   already fsyncs the staging file, so that a single store waits on the disk less;
3. the blob keys of a batch are committed to the index as *intents*;
4. each blob is committed to the store (atomic rename, directory fsync);
5. the instance rows are inserted and the intents removed in one transaction.

A crash before 5 leaves intents whose blobs are deleted once the crashed process's lease has
lapsed (at the next start-up, or by any other running worker); after 5 everything is
durable, and only then is the instance acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
from sqlalchemy import Connection

from dicomweb_server.dicom import status
from dicomweb_server.dicom.parse import InvalidInstance, ParsedInstance, parse_instance
from dicomweb_server.errors import StorageError
from dicomweb_server.index import repository
from dicomweb_server.index.records import InstanceRecord, StoredBlob, build_record
from dicomweb_server.index.repository import SeriesStudyMismatch
from dicomweb_server.index.transient import retrying
from dicomweb_server.services.archive import Archive
from dicomweb_server.services.leases import reap
from dicomweb_server.storage import StagedBlob, new_blob_key


@dataclass(slots=True)
class StoreOutcome:
    """What happened to one part of a store request."""

    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    stored: bool = False
    already_present: bool = False
    failure_reason: int | None = None
    warning_reason: int | None = None
    message: str = ""


@dataclass(slots=True)
class PreparedPart:
    """A staged part after parsing: ready to commit, or already failed."""

    staged: StagedBlob | None
    parsed: ParsedInstance | None
    outcome: StoreOutcome
    #: Waits for the flush of the staged bytes that :func:`prepare` started (None: not yet).
    synced: Callable[[], None] | None = None


log = logging.getLogger(__name__)


class LeaseLapsed(Exception):
    """Another worker resolved this one's intents while it was committing."""


def bulk_data_path(study: str, series: str, instance: str, path: str) -> str:
    """The stored (base-relative) BulkDataURI of a value; the base is added when serving."""
    return f"/studies/{study}/series/{series}/instances/{instance}/bulk/{path}"


def failed(reason: int, message: str, parsed: ParsedInstance | None = None) -> StoreOutcome:
    outcome = identify(parsed) if parsed is not None else StoreOutcome()
    outcome.failure_reason = reason
    outcome.message = message
    return outcome


def identify(parsed: ParsedInstance) -> StoreOutcome:
    """An outcome naming the instance, to be completed by the commit."""
    return StoreOutcome(
        sop_class_uid=parsed.sop_class_uid,
        sop_instance_uid=parsed.sop_instance_uid,
        study_instance_uid=parsed.study_instance_uid,
        series_instance_uid=parsed.series_instance_uid,
    )


def prepare(archive: Archive, staged: StagedBlob, expected_study: str | None) -> PreparedPart:
    """Parse a staged part and check it against the request; blocking (run in a thread).

    The store's flush of the staged bytes starts first and runs while the part is parsed:
    a part refused meanwhile merely flushed a file it then deletes.
    """
    synced = archive.blobs.start_sync([staged])
    try:
        parsed = parse_instance(
            staged.path,
            bulk_data_threshold=archive.settings.bulk_data_threshold,
            bulk_uri=bulk_data_path,
            max_sequence_depth=archive.settings.max_sequence_depth,
            max_inflated_bytes=archive.settings.max_inflated_bytes,
        )
    except InvalidInstance as exc:
        staged.path.unlink(missing_ok=True)
        return PreparedPart(None, None, failed(exc.failure_reason, exc.reason))
    if expected_study is not None and parsed.study_instance_uid != expected_study:
        staged.path.unlink(missing_ok=True)
        return PreparedPart(
            None,
            None,
            failed(
                status.STUDY_UID_MISMATCH,
                f"Study Instance UID {parsed.study_instance_uid} does not match the "
                f"study {expected_study} of the request URL",
                parsed,
            ),
        )
    return PreparedPart(staged, parsed, identify(parsed), synced)


def _blob_row(parsed: ParsedInstance, staged: StagedBlob, key: str) -> StoredBlob:
    bulk = [[value.path, value.vr, value.offset, value.length] for value in parsed.bulk]
    return StoredBlob(
        blob_key=key,
        sha256=staged.sha256,
        size=staged.size,
        bulk_json=orjson.dumps(bulk) if bulk else None,
        pixel_layout_json=orjson.dumps(parsed.pixel.to_json()) if parsed.pixel else None,
        deflated=parsed.deflated,
    )


def _refused_duplicate(outcome: StoreOutcome, message: str) -> None:
    outcome.failure_reason = status.DUPLICATE_SOP_INSTANCE
    outcome.message = message


def _settle_existing(
    archive: Archive, part: PreparedPart, existing: repository.StoredState | None
) -> bool:
    """Settle a part whose SOP Instance UID is already stored; True when it needs no blob."""
    assert part.staged is not None
    if existing is None:
        return False
    if existing.sha256 == part.staged.sha256:
        part.outcome.stored = part.outcome.already_present = True
        return True
    if archive.settings.allow_overwrite:
        return False
    _refused_duplicate(
        part.outcome,
        "an instance with this SOP Instance UID and different content is already stored",
    )
    return True


def commit_batch(
    archive: Archive, parts: Sequence[PreparedPart], connection: Connection | None = None
) -> None:
    """Commit prepared parts durably, filling in each part's outcome; blocking.

    ``connection`` lets a long-lived committer reuse one write connection across cycles.
    """
    todo = [part for part in parts if part.parsed is not None and part.staged is not None]
    if not todo:
        return
    if connection is None:
        with archive.write_engine.connect() as own:
            _commit(archive, todo, own)
    else:
        _commit(archive, todo, connection)


def _commit(archive: Archive, todo: Sequence[PreparedPart], connection: Connection) -> None:
    uids = [part.outcome.sop_instance_uid or "" for part in todo]
    # The store's flush of the staged bytes (if it needs one) overlaps the intents
    # transaction's own flush: neither waits for the other.
    synced = _start_sync(archive, todo)
    with connection.begin():
        existing = repository.stored_states(connection, uids)
        pending = [
            part
            for part in todo
            if not _settle_existing(
                archive, part, existing.get(part.outcome.sop_instance_uid or "")
            )
        ]
        keys = {id(part): new_blob_key(part.staged.sha256) for part in pending if part.staged}
        repository.add_intents(connection, keys.values(), archive.worker_id)
    for part in todo:
        if part not in pending and part.staged is not None:
            part.staged.path.unlink(missing_ok=True)
    if not pending:
        return
    try:
        synced()
        archive.blobs.commit_all(
            [(part.staged, keys[id(part)]) for part in pending if part.staged], synced=True
        )
    except BaseException:
        # No row will reference any blob of this attempt: drop those that made it, so the
        # failure leaves nothing for a lease to expire on (best effort; the intents stay
        # for whatever cannot be deleted now).
        _drop_attempt(archive, connection, list(keys.values()))
        raise

    # One order for every transaction (study, series, instance), so that workers storing
    # into the same new studies wait for each other instead of deadlocking.
    pending.sort(key=_level_order)
    try:
        discarded, replaced = retrying(lambda: _insert_rows(archive, connection, pending, keys))
    except LeaseLapsed:
        # Rolled back: no row references this attempt's blobs, and no intent covers them.
        for key in keys.values():
            archive.blobs.delete(key)
        raise StorageError(
            "the store was interrupted (this server's lease in the index lapsed); "
            "nothing was stored, send the instances again"
        ) from None
    if archive.statistics is not None:
        archive.statistics.stored(sum(1 for part in pending if part.outcome.stored))
    # Blobs no row references any more: ours that lost a race, and overwritten ones. Their
    # intents were kept until now, so a crash here still leaves them to be found.
    leftovers = discarded + replaced
    if leftovers:
        for key in leftovers:
            archive.blobs.delete(key)
        with connection.begin():
            repository.remove_intents(connection, leftovers)


def _start_sync(archive: Archive, todo: Sequence[PreparedPart]) -> Callable[[], None]:
    """Wait-function for the flushes of all parts: those :func:`prepare` started, and the rest."""
    started = [part.synced for part in todo if part.synced is not None]
    rest = archive.blobs.start_sync(
        [part.staged for part in todo if part.synced is None and part.staged is not None]
    )

    def wait() -> None:
        failure: BaseException | None = None
        for waiter in (*started, rest):
            try:
                waiter()
            except BaseException as exc:  # every flush settles before the first failure
                failure = failure or exc
        if failure is not None:
            raise failure

    return wait


def _drop_attempt(archive: Archive, connection: Connection, keys: list[str]) -> None:
    try:
        for key in keys:
            archive.blobs.delete(key)
        with connection.begin():
            repository.remove_intents(connection, keys)
    except Exception as exc:
        log.warning("could not clean up a failed store attempt now: %s", exc)


def _level_order(part: PreparedPart) -> tuple[str, str, str]:
    outcome = part.outcome
    return (
        outcome.study_instance_uid or "",
        outcome.series_instance_uid or "",
        outcome.sop_instance_uid or "",
    )


def _insert_rows(
    archive: Archive, connection: Connection, pending: Sequence[PreparedPart], keys: dict[int, str]
) -> tuple[list[str], list[str]]:
    """The row transaction of a batch; re-runnable from scratch when the index asks for it.

    Returns the blob keys no row references after it: new blobs that lost a race, and old
    blobs of overwritten instances. Both keep an intent until the caller deleted them.
    """
    for part in pending:
        part.outcome.stored = part.outcome.already_present = False
        part.outcome.failure_reason, part.outcome.message = None, ""
    discarded: list[str] = []
    replaced: list[str] = []
    with connection.begin():
        # Intents go first: on PostgreSQL this locks them against another worker's clean-up,
        # and a shortfall means that clean-up already took them (this worker's lease lapsed)
        # and may have deleted the blobs, so no row may point at them.
        if repository.remove_intents(connection, list(keys.values())) != len(keys):
            raise LeaseLapsed
        cache = repository.LevelCache()
        resolved: list[tuple[PreparedPart, str, int, InstanceRecord, StoredBlob]] = []
        for part in pending:
            assert part.parsed is not None and part.staged is not None
            key = keys[id(part)]
            record = build_record(part.parsed.metadata, part.parsed.transfer_syntax_uid)
            try:
                series_pk = repository.series_key(connection, record, cache)
            except SeriesStudyMismatch:
                _refused_series(part.outcome)
                discarded.append(key)
                continue
            resolved.append(
                (part, key, series_pk, record, _blob_row(part.parsed, part.staged, key))
            )
        inserted = repository.insert_instances(
            connection, [(series_pk, record, blob) for _, _, series_pk, record, blob in resolved]
        )
        for (part, key, _, record, blob), created in zip(resolved, inserted, strict=True):
            if created:
                part.outcome.stored = True
            else:
                _settle_conflict(
                    archive, connection, part, key, record, blob, cache, discarded, replaced
                )
        repository.add_intents(connection, discarded, archive.worker_id)
    return discarded, replaced


def _refused_series(outcome: StoreOutcome) -> None:
    outcome.failure_reason = status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    outcome.message = (
        f"Series Instance UID {outcome.series_instance_uid} is already stored in another study"
    )


def _settle_conflict(
    archive: Archive,
    connection: Connection,
    part: PreparedPart,
    key: str,
    record: InstanceRecord,
    blob: StoredBlob,
    cache: repository.LevelCache,
    discarded: list[str],
    replaced: list[str],
) -> None:
    """A part whose row was not inserted: stored meanwhile, or already there when overwriting."""
    uid = record.instance.sop_instance_uid
    outcome = part.outcome
    state = repository.stored_states(connection, [uid]).get(uid)
    if state is not None and state.sha256 == blob.sha256:
        outcome.stored = outcome.already_present = True
        discarded.append(key)
    elif state is not None and archive.settings.allow_overwrite:
        try:
            repository.add_intents(connection, [state.blob_key], archive.worker_id)
            repository.replace_instance(connection, state.pk, record, blob, cache)
        except SeriesStudyMismatch:
            _refused_series(outcome)
            discarded.append(key)
            return
        replaced.append(state.blob_key)
        outcome.stored = True
    else:
        _refused_duplicate(
            outcome, "a different instance with this SOP Instance UID was stored meanwhile"
        )
        discarded.append(key)


def recover(archive: Archive) -> tuple[int, int]:
    """Undo what interrupted processes left behind; returns (staging files, orphan blobs).

    Safe while other processes serve the same index and store: only staging folders and
    intents of processes that are gone are touched (:mod:`dicomweb_server.services.leases`).
    """
    staging = archive.blobs.clear_staging()
    reaped = reap(archive.write_sessions, archive.blobs, archive.settings.worker_lease_seconds)
    return staging, reaped.orphan_blobs
