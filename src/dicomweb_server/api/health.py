"""Liveness and readiness probes for orchestrators and load balancers."""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from sqlalchemy import text
from starlette.responses import JSONResponse, Response

from dicomweb_server.api.deps import ArchiveDep

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    """The process is alive."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(archive: ArchiveDep) -> Response:
    """The index answers and the blob store can take instances: ready for traffic."""

    def check() -> str | None:
        try:
            with archive.reads() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:
            return f"index unavailable: {type(exc).__name__}"
        try:
            return archive.blobs.check()
        except Exception as exc:
            return f"blob store unavailable: {type(exc).__name__}"

    problem = await anyio.to_thread.run_sync(check)
    if problem:
        return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
    return JSONResponse({"status": "ready"})
