"""WADO-RS frames: ``.../instances/{i}/frames/{list}`` (PS3.18 10.4.1.1.3, 8.7.3.3)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import anyio
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb_server.api.byte_ranges import PartsResponse, etag_matches, range_response
from dicomweb_server.api.deps import ArchiveDep, check_path
from dicomweb_server.api.encoding import multipart_related_type, new_boundary
from dicomweb_server.api.frame_media import FrameChoice, choose_frame_representation
from dicomweb_server.api.negotiation import accept_ranges
from dicomweb_server.api.urls import base_url, instance_url
from dicomweb_server.audit.middleware import report_refs
from dicomweb_server.errors import NotAcceptable
from dicomweb_server.imaging.codecs import FrameCodecError, can_transcode_frame, transcode_frame
from dicomweb_server.index.lookup import InstanceRef
from dicomweb_server.services import pixels
from dicomweb_server.services.archive import Archive
from dicomweb_server.storage import WouldWait

router = APIRouter()


@dataclass(frozen=True, slots=True)
class _Plan:
    source: pixels.FrameSource
    numbers: list[int]
    choice: FrameChoice
    first: bytes | None


def _plan(
    archive: Archive,
    request: Request,
    study: str,
    series: str,
    instance: str,
    frames: str | list[int],
) -> _Plan:
    """Everything before the first byte: lookup, frame checks, negotiation (blocking)."""
    if isinstance(frames, str):
        numbers = pixels.parse_frame_list(frames, archive.settings.max_frames_per_request)
    else:
        numbers = frames
    source = pixels.find_frame_source(archive, study, series, instance)
    pixels.check_frames(source, numbers)

    def can_transcode(stored: str, target: str) -> bool:
        attributes = pixels.image_attributes(archive, source)
        return can_transcode_frame(attributes, stored, target)

    choice = choose_frame_representation(
        accept_ranges(request), source.transfer_syntax, len(numbers), can_transcode
    )
    first = None
    if choice.stored:
        first = pixels.read_stored_frame(archive, source, numbers[0])
    return _Plan(source, numbers, choice, first)


def _transcode(archive: Archive, plan: _Plan, number: int) -> bytes:
    attributes = pixels.image_attributes(archive, plan.source)
    pixels.check_pixel_budget(archive, attributes, frames=1)
    frame, syntax = pixels.read_frame_to_decode(archive, plan.source, number)
    try:
        return transcode_frame(attributes, frame, syntax, plan.choice.transfer_syntax)
    except FrameCodecError as exc:
        raise NotAcceptable(
            f"cannot deliver the frame in {plan.choice.transfer_syntax}: {exc}; ask with "
            "transfer-syntax=* for the stored bytes"
        ) from exc


def _deliver(archive: Archive, plan: _Plan, number: int) -> bytes:
    if plan.choice.stored:
        return pixels.read_stored_frame(archive, plan.source, number)
    return _transcode(archive, plan, number)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
async def retrieve_frames(
    request: Request, archive: ArchiveDep, study: str, series: str, instance: str, frames: str
) -> Response:
    """One or more frames of an instance, as stored or transcoded."""
    check_path(study, series, instance)
    return await frames_response(request, archive, study, series, instance, frames)


async def frames_response(
    request: Request,
    archive: Archive,
    study: str,
    series: str,
    instance: str,
    frames: str | list[int],
) -> Response:
    """The frames response for a frame list (text from the path, or numbers)."""
    plan = await anyio.to_thread.run_sync(_plan, archive, request, study, series, instance, frames)
    report_refs(request, [plan.source.instance])
    choice = plan.choice
    limiter = request.app.state.imaging_limiter
    first = plan.first
    if first is None:
        # Transcode the first frame before answering, so a codec failure is a clean 406.
        first = await anyio.to_thread.run_sync(
            _transcode, archive, plan, plan.numbers[0], limiter=limiter
        )
    headers = {"Vary": "Accept"}
    if not choice.multipart:
        if not choice.stored:
            return Response(first, media_type=choice.content_type, headers=headers)
        etag = _frame_etag(plan.source, plan.numbers[0])
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers={**headers, "ETag": etag})
        if "range" not in request.headers:
            return single_frame_response(choice, plan.source, plan.numbers[0], first)
        return range_response(
            request.headers,
            length=len(first),
            etag=etag,
            media_type=choice.content_type,
            read=_slice_reader(first),
            headers=headers,
        )
    root = base_url(request, archive.settings)
    if len(plan.numbers) == 1:
        return frame_parts_response(root, choice, plan.source, plan.numbers[0], first)
    boundary = new_boundary()
    location = _frames_location(root, plan.source.instance)

    def head(number: int) -> bytes:
        return _part_head(boundary, choice, location, number)

    media_type = _multipart_type(boundary, choice)
    closing = f"\r\n--{boundary}--\r\n".encode()

    async def stream() -> AsyncIterator[bytes]:
        for index, number in enumerate(plan.numbers):
            if index == 0:
                data = first
            elif choice.stored:
                # From memory on the event loop when the store has the frame there: a hand-off
                # per frame to a thread cost more CPU than reading it.
                try:
                    data = pixels.read_stored_frame(archive, plan.source, number, now=True)
                except (WouldWait, KeyError):
                    data = await anyio.to_thread.run_sync(_deliver, archive, plan, number)
            else:
                data = await anyio.to_thread.run_sync(
                    _deliver, archive, plan, number, limiter=limiter
                )
            yield (b"\r\n" if index else b"") + head(number)
            yield data
        yield closing

    return StreamingResponse(stream(), media_type=media_type, headers=headers)


def _frame_etag(source: pixels.FrameSource, number: int) -> str:
    # The stored bytes of a frame of an immutable instance: a strong validator.
    return f'"{source.instance.sha256}-{number}"'


def _frames_location(root: str, ref: InstanceRef) -> str:
    return f"{instance_url(root, ref)}/frames/"


def _part_head(boundary: str, choice: FrameChoice, location: str, number: int) -> bytes:
    return (
        f"--{boundary}\r\nContent-Type: {choice.content_type}\r\n"
        f"Content-Location: {location}{number}\r\n\r\n"
    ).encode()


def _multipart_type(boundary: str, choice: FrameChoice) -> str:
    media_type = multipart_related_type(boundary, choice.media_type)
    return media_type + f"; transfer-syntax={choice.transfer_syntax}"


def single_frame_response(
    choice: FrameChoice, source: pixels.FrameSource, number: int, data: bytes
) -> Response:
    """One frame as stored, as a single-part body with its strong validator."""
    headers = {"Vary": "Accept", "ETag": _frame_etag(source, number), "Accept-Ranges": "bytes"}
    return Response(data, media_type=choice.content_type, headers=headers)


def frame_parts_response(
    root: str, choice: FrameChoice, source: pixels.FrameSource, number: int, data: bytes
) -> Response:
    """One frame (as stored or already transcoded) in a multipart/related body."""
    boundary = new_boundary()
    head = _part_head(boundary, choice, _frames_location(root, source.instance), number)
    closing = f"\r\n--{boundary}--\r\n".encode()
    return PartsResponse(
        [head, data, closing],
        media_type=_multipart_type(boundary, choice),
        headers={"Vary": "Accept"},
    )


def _slice_reader(data: bytes) -> Callable[[int, int], Iterator[bytes]]:
    def read(offset: int, size: int) -> Iterator[bytes]:
        yield data[offset : offset + size]

    return read
