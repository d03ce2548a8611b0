"""STOW-RS: Store Instances (PS3.18 10.5)."""

from __future__ import annotations

import logging

import anyio
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.api.deps import check_uid, get_archive
from dicomweb_server.api.encoding import DICOM_JSON, DICOM_XML, json_bytes
from dicomweb_server.api.errors import warning_value
from dicomweb_server.api.media import parse_media_type
from dicomweb_server.api.multipart import PartData, PartEnd, PartStart, read_multipart
from dicomweb_server.api.negotiation import Offer, accept_ranges, negotiate
from dicomweb_server.api.urls import base_url
from dicomweb_server.audit.middleware import patient_of, report_store
from dicomweb_server.dicom import status
from dicomweb_server.dicom.xml_model import dataset_to_xml
from dicomweb_server.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from dicomweb_server.metrics.registry import count_stow
from dicomweb_server.services import store
from dicomweb_server.services.archive import Archive
from dicomweb_server.services.group_commit import GroupCommitter
from dicomweb_server.services.stow_response import stow_response, stow_status
from dicomweb_server.storage import StagingWriter

log = logging.getLogger(__name__)
router = APIRouter()

BATCH_PARTS = 32
WRITE_CHUNK = 1 << 20
RESPONSE_OFFERS = [Offer(DICOM_JSON), Offer(DICOM_XML)]


def _boundary(request: Request) -> str:
    content_type = request.headers.get("content-type")
    if not content_type:
        raise UnsupportedMediaType(
            'STOW-RS needs Content-Type: multipart/related; type="application/dicom"'
        )
    media = parse_media_type(content_type)
    part_type = media.params.get("type", "application/dicom").lower()
    if media.essence != "multipart/related" or part_type != "application/dicom":
        raise UnsupportedMediaType(
            f"unsupported Content-Type {content_type!r}: this server stores "
            'multipart/related; type="application/dicom"'
        )
    boundary = media.params.get("boundary")
    if not boundary or len(boundary) > 200:
        raise BadRequest("the multipart/related Content-Type has no valid boundary parameter")
    return boundary


_LIMITER: anyio.CapacityLimiter | None = None


def _ingest_limiter() -> anyio.CapacityLimiter:
    """Threads for writing and parsing parts: a few keep the disk busy; many more only fight
    over the interpreter lock (measured: 16 concurrent clients were slower than 4)."""
    global _LIMITER
    if _LIMITER is None:
        _LIMITER = anyio.CapacityLimiter(4)
    return _LIMITER


class _Ingest:
    """Per-request state: the part being staged and the batch waiting to be committed."""

    def __init__(self, archive: Archive, committer: GroupCommitter, study_uid: str | None) -> None:
        self.archive = archive
        self.committer = committer
        self.study_uid = study_uid
        self.writer: StagingWriter | None = None
        self.accepting = False
        self.chunks: list[bytes] = []
        self.pending = 0
        self.rejected: store.StoreOutcome | None = None
        self.batch: list[store.PreparedPart] = []
        self.outcomes: list[store.StoreOutcome] = []
        self.received = 0
        # Patient of each parsed part, by id(outcome): the audit trail names patients.
        self.patients: dict[int, tuple[str | None, str | None]] = {}

    async def start(self, headers: dict[str, str]) -> None:
        part_type = headers.get("content-type")
        if part_type is not None:
            try:
                essence = parse_media_type(part_type).essence
            except BadRequest:
                essence = part_type
            if essence != "application/dicom":
                self.rejected = store.failed(
                    status.CANNOT_UNDERSTAND, f"part of type {part_type!r} is not application/dicom"
                )
                return
        self.accepting = True

    def _write(self, chunks: list[bytes]) -> None:
        # Runs in a worker thread: the staging file is opened with the first write, so a
        # part that fits in one write costs a single thread hop from open to parse.
        if self.writer is None:
            self.writer = self.archive.blobs.staging_writer()
        self.writer.write_all(chunks)

    async def data(self, chunk: bytes) -> None:
        # Content-Length is checked up front; chunked bodies are counted as they stream.
        self.received += len(chunk)
        if self.received > self.archive.settings.max_request_bytes:
            raise PayloadTooLarge(
                "the request body exceeds the limit of "
                f"{self.archive.settings.max_request_bytes} bytes"
            )
        if not self.accepting:
            return
        self.chunks.append(chunk)
        self.pending += len(chunk)
        if self.pending >= WRITE_CHUNK:
            chunks, self.chunks, self.pending = self.chunks, [], 0
            await anyio.to_thread.run_sync(self._write, chunks, limiter=_ingest_limiter())

    async def end(self) -> None:
        if self.rejected is not None:
            self.outcomes.append(self.rejected)
            self.rejected = None
            return
        chunks, self.chunks, self.pending, self.accepting = self.chunks, [], 0, False

        def finish() -> store.PreparedPart:
            self._write(chunks)
            writer, self.writer = self.writer, None
            assert writer is not None
            return store.prepare(self.archive, writer.finish(), self.study_uid)

        prepared = await anyio.to_thread.run_sync(finish, limiter=_ingest_limiter())
        self.outcomes.append(prepared.outcome)
        if prepared.parsed is not None:
            self.patients[id(prepared.outcome)] = patient_of(prepared.parsed.metadata)
            self.batch.append(prepared)
        if len(self.batch) >= BATCH_PARTS:
            await self.flush()

    async def flush(self) -> None:
        batch, self.batch = self.batch, []
        if not batch:
            return
        try:
            # Shielded: once handed over, the staged files belong to the committer until it
            # answers, even when the client goes away meanwhile.
            with anyio.CancelScope(shield=True):
                await self.committer.commit(batch)
        except BaseException:
            # Committed blobs are covered by their intents; what is still staged goes now.
            for part in batch:
                if part.staged is not None:
                    part.staged.path.unlink(missing_ok=True)
            raise

    def abort_part(self) -> None:
        """Drop the part being received (its bytes never completed).

        Synchronous on purpose: closing and unlinking are quick, and cleanup must also run
        when the request is being cancelled, where an await would be interrupted.
        """
        writer, self.writer = self.writer, None
        self.chunks, self.pending, self.accepting, self.rejected = [], 0, False, None
        if writer is not None:
            writer.abort()

    def abort(self) -> None:
        """Drop everything not yet committed (the client went away or a limit was hit)."""
        self.abort_part()
        for part in self.batch:
            if part.staged is not None:
                part.staged.path.unlink(missing_ok=True)
        self.batch = []


async def store_response(request: Request, archive: Archive, study_uid: str | None) -> Response:
    """Receive, store and answer one STOW-RS request (the routes' and the fast lane's)."""
    if study_uid is not None:
        check_uid(study_uid, "Study Instance")
    boundary = _boundary(request)
    offer, _ = negotiate(accept_ranges(request), RESPONSE_OFFERS)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > archive.settings.max_request_bytes:
        raise PayloadTooLarge(
            f"the request body exceeds the limit of {archive.settings.max_request_bytes} bytes"
        )
    ingest = _Ingest(archive, request.app.state.committer, study_uid)
    truncated: str | None = None
    try:
        async for event in read_multipart(
            request.stream(),
            boundary,
            max_header_bytes=archive.settings.max_part_header_bytes,
            max_parts=archive.settings.max_parts_per_request,
        ):
            if isinstance(event, PartData):
                await ingest.data(event.data)
            elif isinstance(event, PartStart):
                await ingest.start(event.headers)
            elif isinstance(event, PartEnd):
                await ingest.end()
        await ingest.flush()
    except BadRequest as exc:
        if not ingest.outcomes:
            ingest.abort()
            raise
        # The body broke after complete parts: those are committed on their own merits and
        # only the damaged part is reported as failed.
        ingest.abort_part()
        await ingest.flush()
        truncated = exc.message
    except BaseException:
        ingest.abort()
        report_store(request, ingest.outcomes, ingest.patients)
        count_stow(request.scope, ingest.received, ingest.outcomes)
        raise

    outcomes = ingest.outcomes
    if truncated is not None:
        # Parts before the damage were stored (or failed) on their own merits; the damaged
        # part is reported as a failure rather than discarding the whole request.
        outcomes = [*outcomes, store.failed(status.CANNOT_UNDERSTAND, truncated)]
    report_store(request, outcomes, ingest.patients)
    count_stow(request.scope, ingest.received, outcomes)
    if not outcomes:
        raise BadRequest("the multipart body contains no parts")
    root = base_url(request, archive.settings)
    dataset = stow_response(outcomes, root, study_uid)
    headers: dict[str, str] = {}
    messages = sorted({outcome.message for outcome in outcomes if outcome.message})
    if messages:
        headers["Warning"] = ", ".join(warning_value(request, text) for text in messages[:20])
    for outcome in outcomes:
        if not outcome.stored:
            log.info(
                "STOW refused %s: %s (0x%04X)",
                outcome.sop_instance_uid or "a part",
                outcome.message,
                outcome.failure_reason or 0,
            )
    body = dataset_to_xml(dataset) if offer.media_type == DICOM_XML else json_bytes(dataset)
    return Response(
        body, status_code=stow_status(outcomes), media_type=offer.media_type, headers=headers
    )


@router.post("/studies")
async def store_instances(request: Request) -> Response:
    """Store instances of any studies."""
    return await store_response(request, get_archive(request), None)


@router.post("/studies/{study}")
async def store_study_instances(request: Request, study: str) -> Response:
    """Store instances that must belong to the given study."""
    return await store_response(request, get_archive(request), study)
