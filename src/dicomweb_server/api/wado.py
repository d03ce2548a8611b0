"""WADO-RS: retrieve studies, series, instances, metadata and bulk data (PS3.18 10.4)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import anyio
from fastapi import APIRouter
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb_server.api import frames
from dicomweb_server.api.byte_ranges import PartsResponse, etag_matches, range_response
from dicomweb_server.api.deps import ArchiveDep, check_path
from dicomweb_server.api.encoding import (
    DICOM_JSON,
    DICOM_XML,
    multipart_related_type,
    new_boundary,
    xml_multipart,
)
from dicomweb_server.api.media import MediaRange
from dicomweb_server.api.negotiation import Offer, _admits, accept_ranges, negotiate
from dicomweb_server.api.urls import base_url, instance_url
from dicomweb_server.audit.middleware import report_refs
from dicomweb_server.errors import BadRequest, NotAcceptable, StorageError
from dicomweb_server.imaging.transcode import TranscodeError
from dicomweb_server.index.lookup import InstanceRef
from dicomweb_server.services import retrieve
from dicomweb_server.services.archive import Archive
from dicomweb_server.storage import WouldWait

router = APIRouter()

#: Stored instances up to this many read-size chunks are read with one read and sent as one
#: body message; larger ones are streamed chunk by chunk to bound memory.
ONE_READ_CHUNKS = 8

DICOM_OFFER = Offer("multipart/related", "application/dicom")
ZIP_OFFER = Offer("application/zip")
#: A single instance may also be asked for as one application/dicom body (PS3.18 8.7.3.5.1),
#: which is what makes byte ranges over it meaningful.
SINGLE_DICOM_OFFER = Offer("application/dicom")
#: What a single instance can be delivered as, the default first.
INSTANCE_OFFERS = [DICOM_OFFER, ZIP_OFFER, SINGLE_DICOM_OFFER]
METADATA_OFFERS = [
    Offer(DICOM_JSON),
    Offer("application/json"),
    Offer("multipart/related", DICOM_XML),
]


def _require_accept(request: Request) -> list[MediaRange]:
    ranges = accept_ranges(request)
    if "accept" not in request.headers and "accept" not in request.query_params:
        raise NotAcceptable(
            "the request has no Accept header; PS3.18 8.7.7 (8.7.5 in earlier editions) "
            "answers such a retrieval with 406 "
            '(e.g. Accept: multipart/related; type="application/dicom"; transfer-syntax=*)'
        )
    return ranges


def requested_syntaxes(ranges: list[MediaRange], offer: Offer) -> list[str | None]:
    # No usable range (none sent, or all malformed and ignored) means the default syntax.
    wanted = [media.params.get("transfer-syntax") for media in ranges if _admits(media, offer)]
    return wanted or [None]


@dataclass(frozen=True, slots=True)
class _Part:
    """One instance of a multipart answer: its head, and how to read its bytes."""

    head: bytes
    chunks: Callable[[], Iterator[bytes]]
    #: The whole stored instance if it is in memory now, else None (see _stored_now).
    now: Callable[[], bytes | None] | None = None


def _stored_now(archive: Archive, ref: InstanceRef) -> bytes | None:
    """The stored instance's bytes when the blob store has them in memory now.

    A series streamed instance by instance through a worker thread took two hand-offs per
    instance (its one chunk, then the end of its chunks), which cost more CPU than reading
    the instance; an instance in the page cache is now read on the event loop instead.
    """
    try:
        return archive.blobs.read_range_now(ref.blob_key, 0, ref.size)
    except KeyError:
        return None  # the ordinary read reports it


async def _multipart_stream(boundary: str, parts: Sequence[_Part]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part.head
        data = part.now() if part.now is not None else None
        if data is not None:
            yield data
        else:
            async for chunk in iterate_in_threadpool(part.chunks()):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


async def _retrieve(
    request: Request, archive: Archive, study: str, series: str | None, instance: str | None
) -> Response:
    check_path(study, series, instance)
    ranges = _require_accept(request)
    offers = INSTANCE_OFFERS if instance is not None else [DICOM_OFFER, ZIP_OFFER]
    offer, _ = negotiate(ranges, offers)
    refs = await anyio.to_thread.run_sync(retrieve.find_instances, archive, study, series, instance)
    report_refs(request, refs)
    target = retrieve.choose_transfer_syntax(requested_syntaxes(ranges, offer), refs)
    ready: bytes | None = None
    if len(refs) == 1 and retrieve.delivered_syntax(refs[0], target) != refs[0].transfer_syntax_uid:
        # One instance to re-encode: do it before answering, so a failure is a clean 406
        # rather than a response cut off after its status line.
        try:
            ready = b"".join(
                await anyio.to_thread.run_sync(
                    lambda: list(retrieve.instance_chunks(archive, refs[0], target))
                )
            )
        except TranscodeError as exc:
            raise NotAcceptable(
                f"{exc}; ask with transfer-syntax=* for the stored syntax "
                f"{refs[0].transfer_syntax_uid}"
            ) from exc
    if offer is ZIP_OFFER:
        name = (instance or series or study) + ".zip"
        return StreamingResponse(
            iterate_in_threadpool(retrieve.zip_chunks(archive, refs, target, ready)),
            media_type="application/zip",
            headers={"Vary": "Accept", "Content-Disposition": f'attachment; filename="{name}"'},
        )
    root = base_url(request, archive.settings)
    boundary = _instance_boundary(refs[0]) if instance is not None else new_boundary()
    parts: list[_Part] = []
    if offer is SINGLE_DICOM_OFFER:
        return await _single_instance(request, archive, refs[0], target, ready)
    for ref in refs:
        syntax = retrieve.delivered_syntax(ref, target)
        head = _part_head(boundary, root, ref, syntax)
        if ready is not None:
            parts.append(_Part(head, partial(iter, [ready])))
        else:
            as_stored = syntax == ref.transfer_syntax_uid
            parts.append(
                _Part(
                    head,
                    partial(retrieve.instance_chunks, archive, ref, target),
                    partial(_stored_now, archive, ref) if as_stored else None,
                )
            )
    headers = {"Vary": "Accept"}
    if instance is not None and ready is None:
        # The part is the stored bytes, whose SHA-256 is their strong validator.
        headers["ETag"] = f'"{refs[0].sha256}"'
        if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
            return Response(status_code=304, headers=headers)
    media_type = _multipart_type(boundary, target)
    if instance is not None:
        # One instance: its bytes in memory (re-encoded, or one read of a file of moderate
        # size), sent between the framing without joining them to it.
        data = ready if ready is not None else await _read_whole(archive, refs[0])
        if data is not None:
            closing = f"\r\n--{boundary}--\r\n".encode()
            return PartsResponse(
                [parts[0].head, data, closing], media_type=media_type, headers=headers
            )
    return StreamingResponse(
        _multipart_stream(boundary, parts), media_type=media_type, headers=headers
    )


def _instance_boundary(ref: InstanceRef) -> str:
    # One stored instance is sent with a boundary derived from its hash, so the whole
    # representation is stable and its ETag a true strong validator.
    return f"dicomweb-{ref.sha256[:32]}"


def _part_head(boundary: str, root: str, ref: InstanceRef, syntax: str) -> bytes:
    return (
        f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={syntax}\r\n"
        f"Content-Location: {instance_url(root, ref)}\r\n\r\n"
    ).encode()


def _multipart_type(boundary: str, target: str) -> str:
    media_type = multipart_related_type(boundary, "application/dicom")
    if target != retrieve.ANY_TRANSFER_SYNTAX:
        media_type += f"; transfer-syntax={target}"
    return media_type


def fits_one_read(archive: Archive, ref: InstanceRef) -> bool:
    """Whether a stored instance is small enough to be read whole rather than streamed."""
    return ref.size <= archive.settings.retrieve_chunk_bytes * ONE_READ_CHUNKS


def instance_parts_response(root: str, ref: InstanceRef, target: str, data: bytes) -> Response:
    """One stored instance as ``multipart/related; type="application/dicom"``."""
    boundary = _instance_boundary(ref)
    head = _part_head(boundary, root, ref, retrieve.delivered_syntax(ref, target))
    closing = f"\r\n--{boundary}--\r\n".encode()
    return PartsResponse(
        [head, data, closing],
        media_type=_multipart_type(boundary, target),
        headers={"Vary": "Accept", "ETag": f'"{ref.sha256}"'},
    )


def single_instance_response(ref: InstanceRef, syntax: str, data: bytes) -> Response:
    """One stored instance, whole, as a single-part ``application/dicom`` body."""
    headers = {"Vary": "Accept", "ETag": f'"{ref.sha256}"', "Accept-Ranges": "bytes"}
    return PartsResponse(
        [data], media_type=f"application/dicom; transfer-syntax={syntax}", headers=headers
    )


def read_stored(archive: Archive, ref: InstanceRef, *, now: bool = False) -> bytes:
    """A stored instance's bytes in one read (blocking), checked against the index.

    ``now``: only from memory (:meth:`BlobStore.read_range_now`), else :class:`WouldWait`.
    """
    if now:
        found = archive.blobs.read_range_now(ref.blob_key, 0, ref.size)
        if found is None:
            raise WouldWait  # not in memory, or not of the recorded size: read and check
        return found
    data = archive.blobs.read_range(ref.blob_key, 0, ref.size)
    if len(data) != ref.size:
        # Content-Length comes from the index: a blob of another length must not be sent.
        raise StorageError(
            f"the stored instance {ref.sop_instance_uid} is {len(data)} bytes, "
            f"the index recorded {ref.size}"
        )
    return data


async def _read_whole(archive: Archive, ref: InstanceRef) -> bytes | None:
    """A stored instance's bytes in one read, or ``None`` when it is large enough to stream."""
    if not fits_one_read(archive, ref):
        return None
    return await anyio.to_thread.run_sync(read_stored, archive, ref)


async def _single_instance(
    request: Request, archive: Archive, ref: InstanceRef, target: str, ready: bytes | None
) -> Response:
    """One instance as a single-part application/dicom body, with byte ranges when stored."""
    syntax = retrieve.delivered_syntax(ref, target)
    media_type = f"application/dicom; transfer-syntax={syntax}"
    headers = {"Vary": "Accept"}
    if ready is not None:
        return Response(ready, media_type=media_type, headers=headers)
    etag = f'"{ref.sha256}"'
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={**headers, "ETag": etag})
    if "range" not in request.headers:
        data = await _read_whole(archive, ref)
        if data is not None:
            return single_instance_response(ref, syntax, data)
    chunk = archive.settings.retrieve_chunk_bytes

    def read(offset: int, size: int) -> Iterator[bytes]:
        return archive.blobs.iter_range(ref.blob_key, offset, size, chunk)

    return range_response(
        request.headers,
        length=ref.size,
        etag=etag,
        media_type=media_type,
        read=read,
        headers=headers,
    )


@router.get("/studies/{study}")
async def retrieve_study(request: Request, archive: ArchiveDep, study: str) -> Response:
    """Retrieve all instances of a study."""
    return await _retrieve(request, archive, study, None, None)


@router.get("/studies/{study}/series/{series}")
async def retrieve_series(
    request: Request, archive: ArchiveDep, study: str, series: str
) -> Response:
    """Retrieve all instances of a series."""
    return await _retrieve(request, archive, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{instance}")
async def retrieve_instance(
    request: Request, archive: ArchiveDep, study: str, series: str, instance: str
) -> Response:
    """Retrieve one instance."""
    return await _retrieve(request, archive, study, series, instance)


async def _metadata(
    request: Request, archive: Archive, study: str, series: str | None, instance: str | None
) -> Response:
    check_path(study, series, instance)
    offer, _ = negotiate(_require_accept(request), METADATA_OFFERS)
    root = base_url(request, archive.settings)
    if offer.part_type == DICOM_XML:
        datasets, refs = await anyio.to_thread.run_sync(
            retrieve.metadata_datasets, archive, root, study, series, instance
        )
        report_refs(request, refs)
        boundary = new_boundary()
        body = await anyio.to_thread.run_sync(xml_multipart, datasets, boundary)
        return Response(
            body, media_type=multipart_related_type(boundary, DICOM_XML), headers={"Vary": "Accept"}
        )
    body, refs = await anyio.to_thread.run_sync(
        retrieve.metadata_json, archive, root, study, series, instance
    )
    report_refs(request, refs)
    return metadata_response(body, offer)


def metadata_response(body: bytes, offer: Offer) -> Response:
    """Metadata as DICOM JSON."""
    return Response(body, media_type=offer.media_type, headers={"Vary": "Accept"})


@router.get("/studies/{study}/metadata")
async def retrieve_study_metadata(request: Request, archive: ArchiveDep, study: str) -> Response:
    """Metadata of every instance of a study."""
    return await _metadata(request, archive, study, None, None)


@router.get("/studies/{study}/series/{series}/metadata")
async def retrieve_series_metadata(
    request: Request, archive: ArchiveDep, study: str, series: str
) -> Response:
    """Metadata of every instance of a series."""
    return await _metadata(request, archive, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
async def retrieve_instance_metadata(
    request: Request, archive: ArchiveDep, study: str, series: str, instance: str
) -> Response:
    """Metadata of one instance."""
    return await _metadata(request, archive, study, series, instance)


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulk/{path:path}")
async def retrieve_bulk_data(
    request: Request, archive: ArchiveDep, study: str, series: str, instance: str, path: str
) -> Response:
    """A bulk data value recorded at ingest (the target of a BulkDataURI)."""
    check_path(study, series, instance)
    steps = path.strip("/").split("/")
    valid = len(steps) % 2 == 1 and all(
        (len(step) == 8 and all(c in "0123456789abcdefABCDEF" for c in step))
        if position % 2 == 0
        else step.isdigit() and len(step) < 7
        for position, step in enumerate(steps)
    )
    if not valid:
        raise BadRequest(f"malformed bulk data path {path[:100]!r}")
    ranges = _require_accept(request)
    bulk = await anyio.to_thread.run_sync(
        retrieve.bulk_data, archive, study, series, instance, "/".join(steps)
    )
    report_refs(request, [bulk.instance])
    # Only what the value really is can be offered: compressed pixel data comes in its
    # compressed media type (frame by frame), everything else as octet-stream.
    offered = bulk.parts[0].media_type
    offers = [Offer("multipart/related", offered)]
    if len(bulk.parts) == 1:
        offers.append(Offer(offered))
    try:
        offer, _ = negotiate(ranges, offers)
    except NotAcceptable:
        if bulk.frames is None:
            raise
        # Compressed Pixel Data asked for in another representation (decoded frames, or
        # another syntax): the value is a frame-capable resource, answered like the frames
        # resource for all its frames.
        return await frames.frames_response(
            request, archive, study, series, instance, list(range(1, bulk.frames + 1))
        )
    if offer.part_type is None:
        return _single_bulk(request, archive, bulk)
    boundary = new_boundary()
    parts: list[_Part] = []
    for part in bulk.parts:
        syntax = f"; transfer-syntax={part.transfer_syntax}" if part.transfer_syntax else ""
        head = f"--{boundary}\r\nContent-Type: {part.media_type}{syntax}\r\n\r\n".encode()
        parts.append(_Part(head, partial(retrieve.bulk_chunks, archive, bulk.instance, part)))
    media_type = multipart_related_type(boundary, bulk.parts[0].media_type)
    return StreamingResponse(_multipart_stream(boundary, parts), media_type=media_type)


def _single_bulk(request: Request, archive: Archive, bulk: retrieve.BulkData) -> Response:
    """One bulk data value as a single-part body, honouring byte ranges (RFC 9110 14)."""
    part = bulk.parts[0]
    syntax = f"; transfer-syntax={part.transfer_syntax}" if part.transfer_syntax else ""
    media_type = part.media_type + syntax
    length = len(part.data) if part.data is not None else sum(n for _, n in part.ranges)
    # The value's bytes are a function of the stored instance and the path: the instance
    # hash and the path make a strong validator.
    etag = f'"{bulk.instance.sha256}-{request.url.path.rsplit("/bulk/", 1)[-1]}"'
    headers = {"Vary": "Accept"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={**headers, "ETag": etag})

    def read(offset: int, size: int) -> Iterator[bytes]:
        return retrieve.bulk_range(archive, bulk.instance, part, offset, size)

    return range_response(
        request.headers,
        length=length,
        etag=etag,
        media_type=media_type,
        read=read,
        headers=headers,
    )
