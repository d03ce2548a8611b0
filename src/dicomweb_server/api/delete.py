"""DELETE of studies, series and instances."""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.api.deps import ArchiveDep, check_path
from dicomweb_server.audit.middleware import report_refs
from dicomweb_server.index import lookup
from dicomweb_server.services import delete as delete_service

router = APIRouter()


async def _delete(
    request: Request, archive: ArchiveDep, study: str, series: str | None, instance: str | None
) -> Response:
    check_path(study, series, instance)

    def run() -> None:
        # The audit trail names what is deleted: afterwards the index no longer knows it.
        with archive.sessions() as session:
            report_refs(request, lookup.find_instances(session, study, series, instance))
        delete_service.delete(archive, study, series, instance)

    await anyio.to_thread.run_sync(run)
    return Response(status_code=204)


@router.delete("/studies/{study}")
async def delete_study(request: Request, archive: ArchiveDep, study: str) -> Response:
    """Delete a study with all its series and instances."""
    return await _delete(request, archive, study, None, None)


@router.delete("/studies/{study}/series/{series}")
async def delete_series(request: Request, archive: ArchiveDep, study: str, series: str) -> Response:
    """Delete a series with all its instances."""
    return await _delete(request, archive, study, series, None)


@router.delete("/studies/{study}/series/{series}/instances/{instance}")
async def delete_instance(
    request: Request, archive: ArchiveDep, study: str, series: str, instance: str
) -> Response:
    """Delete one instance."""
    return await _delete(request, archive, study, series, instance)
