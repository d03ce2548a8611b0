"""WADO-RS rendered resources and thumbnails (PS3.18 10.4.1.1.x, 8.3.5, 9.5)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb_server.api.deps import ArchiveDep, check_path
from dicomweb_server.api.encoding import multipart_related_type, new_boundary
from dicomweb_server.api.errors import warning_value
from dicomweb_server.api.negotiation import Offer, accept_ranges, negotiate
from dicomweb_server.audit.middleware import report_refs
from dicomweb_server.errors import BadRequest
from dicomweb_server.imaging.render import RenderError, RenderParams, parse_render_params
from dicomweb_server.services import pixels, rendering
from dicomweb_server.services.archive import Archive

router = APIRouter()

IMAGE_OFFERS = [Offer("image/jpeg"), Offer("image/png"), Offer("image/gif")]
MULTIPART_OFFERS = [Offer("multipart/related", offer.media_type) for offer in IMAGE_OFFERS]
_RENDER_KEYS = {"window", "viewport", "quality", "annotation", "iccprofile", "accept", "charset"}
_THUMBNAIL_KEYS = {"viewport", "accept", "charset"}


def _media_type(request: Request, multipart: bool) -> str:
    """The image type to render: a single-part image type, or the part type of a multipart
    request; ``image/jpeg`` by default (PS3.18 Table 8.7.4-1)."""
    ranges = accept_ranges(request)
    offers = IMAGE_OFFERS + (MULTIPART_OFFERS if multipart else [])
    offer, _ = negotiate(ranges, offers)
    return offer.part_type or offer.media_type


def _params(request: Request, media_type: str, allowed: set[str]) -> tuple[RenderParams, list[str]]:
    warnings: list[str] = []
    for key in request.query_params:
        if key not in allowed:
            warnings.append(f"query parameter {key!r} is not supported here and was ignored")
    query = {key: value for key, value in request.query_params.items() if key in allowed}
    try:
        params = parse_render_params(query, media_type)
    except RenderError as exc:
        raise BadRequest(str(exc)) from exc
    if params.annotation:
        warnings.append(
            f"annotation={','.join(params.annotation)} is not supported: the image is rendered "
            "without burned-in annotation"
        )
    return params, warnings


def _headers(request: Request, warnings: list[str]) -> dict[str, str]:
    headers = {"Vary": "Accept"}
    if warnings:
        headers["Warning"] = ", ".join(warning_value(request, text) for text in warnings)
    return headers


async def _render_one(
    request: Request,
    archive: Archive,
    source: pixels.FrameSource,
    number: int,
    params: RenderParams,
) -> bytes:
    return await anyio.to_thread.run_sync(
        rendering.render,
        archive,
        source,
        number,
        params,
        limiter=request.app.state.imaging_limiter,
    )


def render_single(
    archive: Archive, request: Request, target: tuple[str, str, str], number: int
) -> tuple[Response, list[pixels.FrameSource]]:
    """One frame of one instance rendered as one image, and what it was rendered from
    (blocking: run it in the imaging pool)."""
    media_type = _media_type(request, False)
    params, warnings = _params(request, media_type, _RENDER_KEYS)
    sources = rendering.image_sources(archive, *target)
    pixels.check_frames(sources[0], [number])
    image = rendering.render(archive, sources[0], number, params)
    return Response(image, media_type=media_type, headers=_headers(request, warnings)), sources


async def _rendered(
    request: Request,
    archive: Archive,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    frames: str | None = None,
) -> Response:
    check_path(study, series, instance)
    # Study and series resources are several images: multipart/related, one part per
    # instance (its first frame). A frame list of more than one frame likewise.
    numbers: list[int] = [1]
    if frames is not None:
        numbers = pixels.parse_frame_list(frames, archive.settings.max_frames_per_request)
    several = instance is None or len(numbers) > 1
    if not several and series is not None and instance is not None:
        # One image: look-up and rendering in one hand-off to the imaging pool.
        response, sources = await anyio.to_thread.run_sync(
            render_single,
            archive,
            request,
            (study, series, instance),
            numbers[0],
            limiter=request.app.state.imaging_limiter,
        )
        report_refs(request, [source.instance for source in sources])
        return response
    media_type = _media_type(request, several)
    params, warnings = _params(request, media_type, _RENDER_KEYS)
    sources = await anyio.to_thread.run_sync(
        rendering.image_sources, archive, study, series, instance
    )
    report_refs(request, [source.instance for source in sources])
    if instance is not None:
        pixels.check_frames(sources[0], numbers)
    headers = _headers(request, warnings)
    jobs = (
        [(source, number) for source in sources for number in numbers]
        if instance
        else [(source, 1) for source in sources]
    )
    # Render the first image before answering, so a bad image is a clean 400.
    first = await _render_one(request, archive, jobs[0][0], jobs[0][1], params)
    boundary = new_boundary()
    head = f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode()

    async def stream() -> AsyncIterator[bytes]:
        for index, (source, number) in enumerate(jobs):
            image = (
                first if index == 0 else await _render_one(request, archive, source, number, params)
            )
            yield (b"\r\n" if index else b"") + head
            yield image
        yield f"\r\n--{boundary}--\r\n".encode()

    return StreamingResponse(
        stream(), media_type=multipart_related_type(boundary, media_type), headers=headers
    )


async def _thumbnail(
    request: Request,
    archive: Archive,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> Response:
    check_path(study, series, instance)
    media_type = _media_type(request, False)
    params, warnings = _params(request, media_type, _THUMBNAIL_KEYS)
    sources = await anyio.to_thread.run_sync(
        rendering.image_sources, archive, study, series, instance
    )
    source = rendering.representative(sources, series)
    report_refs(request, [source.instance])
    viewport = params.viewport[:2] if params.viewport else None
    image = rendering.cached_thumbnail(source, viewport, media_type)
    if image is None:
        image = await anyio.to_thread.run_sync(
            rendering.make_thumbnail,
            archive,
            source,
            viewport,
            media_type,
            limiter=request.app.state.imaging_limiter,
        )
    headers = _headers(request, warnings)
    headers["Cache-Control"] = "private, max-age=3600"
    return Response(image, media_type=media_type, headers=headers)


@router.get("/studies/{study}/rendered")
async def retrieve_rendered_study(request: Request, archive: ArchiveDep, study: str) -> Response:
    """Every image of a study, rendered (multipart, first frame of each instance)."""
    return await _rendered(request, archive, study)


@router.get("/studies/{study}/series/{series}/rendered")
async def retrieve_rendered_series(
    request: Request, archive: ArchiveDep, study: str, series: str
) -> Response:
    """Every image of a series, rendered (multipart, first frame of each instance)."""
    return await _rendered(request, archive, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered")
async def retrieve_rendered_instance(
    request: Request, archive: ArchiveDep, study: str, series: str, instance: str
) -> Response:
    """An instance rendered as one image (its first frame when it has several)."""
    return await _rendered(request, archive, study, series, instance)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered")
async def retrieve_rendered_frames(
    request: Request, archive: ArchiveDep, study: str, series: str, instance: str, frames: str
) -> Response:
    """Frames rendered: one image, or multipart for a list of frames."""
    return await _rendered(request, archive, study, series, instance, frames)


@router.get("/studies/{study}/thumbnail")
async def retrieve_study_thumbnail(request: Request, archive: ArchiveDep, study: str) -> Response:
    """A thumbnail of a representative image of the study."""
    return await _thumbnail(request, archive, study)


@router.get("/studies/{study}/series/{series}/thumbnail")
async def retrieve_series_thumbnail(
    request: Request, archive: ArchiveDep, study: str, series: str
) -> Response:
    """A thumbnail of the series' middle image."""
    return await _thumbnail(request, archive, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail")
async def retrieve_instance_thumbnail(
    request: Request, archive: ArchiveDep, study: str, series: str, instance: str
) -> Response:
    """A thumbnail of the instance's first frame."""
    return await _thumbnail(request, archive, study, series, instance)
