"""DELETE of studies, series and instances."""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from starlette.responses import Response

from dicomweb_server.api.deps import ArchiveDep, check_path
from dicomweb_server.services import delete as delete_service

router = APIRouter()


async def _delete(
    archive: ArchiveDep, study: str, series: str | None, instance: str | None
) -> Response:
    check_path(study, series, instance)
    await anyio.to_thread.run_sync(delete_service.delete, archive, study, series, instance)
    return Response(status_code=204)


@router.delete("/studies/{study}")
async def delete_study(archive: ArchiveDep, study: str) -> Response:
    """Delete a study with all its series and instances."""
    return await _delete(archive, study, None, None)


@router.delete("/studies/{study}/series/{series}")
async def delete_series(archive: ArchiveDep, study: str, series: str) -> Response:
    """Delete a series with all its instances."""
    return await _delete(archive, study, series, None)


@router.delete("/studies/{study}/series/{series}/instances/{instance}")
async def delete_instance(archive: ArchiveDep, study: str, series: str, instance: str) -> Response:
    """Delete one instance."""
    return await _delete(archive, study, series, instance)
