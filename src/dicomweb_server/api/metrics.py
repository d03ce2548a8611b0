"""Prometheus metrics of all worker processes (docs/deployment.md, Monitoring)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.errors import NotFound
from dicomweb_server.metrics.middleware import METRICS_PATH, exposition_response
from dicomweb_server.metrics.registry import metrics_of

router = APIRouter()


@router.get(METRICS_PATH, include_in_schema=False)
async def metrics(request: Request) -> Response:
    """The exposition; needs the admin permission unless ``DICOMWEB_METRICS_PUBLIC``."""
    found = metrics_of(request.scope)
    if found is None:
        raise NotFound("metrics are off (DICOMWEB_METRICS)")
    return await exposition_response(found, request)
