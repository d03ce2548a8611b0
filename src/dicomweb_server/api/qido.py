"""QIDO-RS: search for studies, series and instances (PS3.18 10.6)."""

from __future__ import annotations

import contextlib
import dataclasses

import anyio
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.api.deps import ArchiveDep, check_path
from dicomweb_server.api.encoding import (
    DICOM_JSON,
    DICOM_XML,
    json_bytes,
    multipart_related_type,
    new_boundary,
    xml_multipart,
)
from dicomweb_server.api.errors import warning_value
from dicomweb_server.api.negotiation import Offer, accept_ranges, negotiate
from dicomweb_server.api.urls import base_url
from dicomweb_server.auth.permissions import principal_of
from dicomweb_server.index.budget import BudgetExceeded, index_budget
from dicomweb_server.index.qido import QueryLevel, SearchResult, parse_query, search
from dicomweb_server.services.archive import Archive

router = APIRouter()

OFFERS = [Offer(DICOM_JSON), Offer("application/json"), Offer("multipart/related", DICOM_XML)]
FORMAT_PARAMETERS = {"accept", "charset"}
#: How long a search may run in the index on the event loop before it is moved to a thread.
LOOP_SEARCH_SECONDS = 0.005


async def search_response(
    request: Request,
    archive: Archive,
    level: QueryLevel,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    """The answer to a search at `level`, within a study or series when they are given."""
    if study is not None:
        check_path(study, series)
    # QIDO is answered as JSON when the client states no preference; retrieval is stricter.
    offer, _ = negotiate(accept_ranges(request), OFFERS)
    params = [
        (name, value)
        for name, value in request.query_params.multi_items()
        if name.lower() not in FORMAT_PARAMETERS
    ]
    settings = archive.settings
    query = parse_query(
        level,
        params,
        study_uid=study,
        series_uid=series,
        default_limit=settings.qido_default_limit,
        max_limit=settings.qido_max_limit,
    )
    patient = principal_of(request).patient
    if patient is not None:
        # A patient-scoped token searches that patient's studies only, whatever it asks.
        query = dataclasses.replace(query, patient_id=patient)
    root = base_url(request, settings)

    as_xml = offer.part_type == DICOM_XML
    boundary = new_boundary() if as_xml else ""

    def run(now: bool = False) -> tuple[SearchResult, bytes]:
        # The body is encoded where the search ran: one thread hop per request at most.
        with archive.reads(now=now) as connection:
            if now:
                with index_budget(connection, LOOP_SEARCH_SECONDS):
                    result = search(connection, query, base_url=root)
            else:
                result = search(connection, query, base_url=root)
        if not result.items:
            return result, b""
        if as_xml:
            return result, xml_multipart(result.items, boundary)
        return result, json_bytes(result.items)

    result_body: tuple[SearchResult, bytes] | None = None
    if archive.index_in_process:
        # A search on SQLite waits on nothing, and handing it to a thread cost about a sixth
        # of its CPU. One that runs longer in the index than the budget is stopped there
        # and run again in a thread, so an expensive search never holds up the event loop.
        with contextlib.suppress(BudgetExceeded):
            result_body = run(now=True)
    if result_body is None:
        result_body = await anyio.to_thread.run_sync(run)
    result, body = result_body
    headers = {"Vary": "Accept"}
    if result.warnings:
        headers["Warning"] = ", ".join(warning_value(request, text) for text in result.warnings)
    if not result.items:
        return Response(status_code=204, headers=headers)
    if as_xml:
        return Response(
            body, media_type=multipart_related_type(boundary, DICOM_XML), headers=headers
        )
    return Response(body, media_type=offer.media_type, headers=headers)


@router.get("/studies")
async def search_for_studies(request: Request, archive: ArchiveDep) -> Response:
    """Search all studies."""
    return await search_response(request, archive, QueryLevel.STUDY)


@router.get("/series")
async def search_for_series(request: Request, archive: ArchiveDep) -> Response:
    """Search all series."""
    return await search_response(request, archive, QueryLevel.SERIES)


@router.get("/instances")
async def search_for_instances(request: Request, archive: ArchiveDep) -> Response:
    """Search all instances."""
    return await search_response(request, archive, QueryLevel.INSTANCE)


@router.get("/studies/{study}/series")
async def search_for_study_series(request: Request, archive: ArchiveDep, study: str) -> Response:
    """Search the series of a study."""
    return await search_response(request, archive, QueryLevel.SERIES, study)


@router.get("/studies/{study}/instances")
async def search_for_study_instances(request: Request, archive: ArchiveDep, study: str) -> Response:
    """Search the instances of a study."""
    return await search_response(request, archive, QueryLevel.INSTANCE, study)


@router.get("/studies/{study}/series/{series}/instances")
async def search_for_series_instances(
    request: Request, archive: ArchiveDep, study: str, series: str
) -> Response:
    """Search the instances of a series."""
    return await search_response(request, archive, QueryLevel.INSTANCE, study, series)
