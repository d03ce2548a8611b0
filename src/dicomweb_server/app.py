"""The ASGI application factory; nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import Depends, FastAPI
from starlette.middleware.cors import CORSMiddleware

from dicomweb_server import __version__
from dicomweb_server.api import audit as audit_api
from dicomweb_server.api import (
    capabilities,
    delete,
    frames,
    health,
    qido,
    rendered,
    stow,
    wado,
)
from dicomweb_server.api import metrics as metrics_api
from dicomweb_server.api.errors import install_error_handlers
from dicomweb_server.api.fast_lane import FastLane
from dicomweb_server.api.limits import QueryStringLimitMiddleware
from dicomweb_server.audit import (
    AuditMiddleware,
    AuditTrail,
    record_auth_failure,
    record_forbidden,
)
from dicomweb_server.auth.middleware import AuthenticationMiddleware
from dicomweb_server.auth.permissions import authorize
from dicomweb_server.auth.tokens import TokenValidator
from dicomweb_server.heap import settle_after_startup
from dicomweb_server.metrics.middleware import MetricsMiddleware
from dicomweb_server.metrics.registry import ArchiveMetrics, multiprocess_directory
from dicomweb_server.services.archive import Archive
from dicomweb_server.services.group_commit import GroupCommitter
from dicomweb_server.settings import Settings

#: Response headers a browser script may read: DICOMweb puts meaning in all of them.
CORS_EXPOSED_HEADERS = [
    "Content-Location",
    "Content-Range",
    "Content-Length",
    "Accept-Ranges",
    "ETag",
    "Location",
    "Warning",
    "WWW-Authenticate",
]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the archive's ASGI app for the given settings (environment by default)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The audit trail comes first and goes last: nothing is served unaudited.
        trail = AuditTrail(settings)
        app.state.audit = trail
        archive = Archive.open(settings)
        committer = GroupCommitter(archive)
        app.state.archive = archive
        app.state.committer = committer
        # Decoding, encoding and rendering share a few threads of their own, so CPU-heavy
        # pixel work queues here instead of filling the thread pool that every other
        # request's file and index work runs in.
        app.state.imaging_limiter = anyio.CapacityLimiter(settings.imaging_workers)
        await anyio.to_thread.run_sync(lambda: trail.application_activity(start=True))
        settle_after_startup()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(committer.close)
            archive.close()
            if validator is not None:
                validator.close()
            if metrics is not None:
                metrics.close()
            try:
                await anyio.to_thread.run_sync(lambda: trail.application_activity(start=False))
            finally:
                await anyio.to_thread.run_sync(trail.close)

    # Fails here, not at the first request, when authentication is on but unconfigured.
    validator = TokenValidator(settings) if settings.auth == "on" else None
    app = FastAPI(
        title="dicomweb-server",
        version=__version__,
        summary="DICOMweb origin server: STOW-RS, QIDO-RS and WADO-RS",
        lifespan=lifespan,
        dependencies=[Depends(authorize)],
    )
    app.state.settings = settings
    app.state.on_forbidden = record_forbidden
    metrics = ArchiveMetrics(multiprocess_directory()) if settings.metrics else None
    app.state.metrics = metrics
    install_error_handlers(app)
    if settings.fast_lane:
        # Innermost: it stands where the router would, inside auditing and authentication.
        app.add_middleware(FastLane, settings=settings)
    app.add_middleware(QueryStringLimitMiddleware, max_bytes=settings.max_query_string_bytes)
    # Auditing runs inside authentication (added before it, so wrapped by it): it sees the
    # validated caller, and requests refused with 401 are recorded by the hook instead.
    app.add_middleware(AuditMiddleware)
    # Authentication runs before routing; CORS, added after it, wraps it, so preflights are
    # answered and even a 401 carries the headers a browser needs to read it.
    app.add_middleware(
        AuthenticationMiddleware, validator=validator, on_failure=record_auth_failure
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=[
                "Accept",
                "Authorization",
                "Content-Type",
                "Range",
                "If-None-Match",
                "If-Range",
                "If-Modified-Since",
            ],
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=3600,
        )
    if metrics is not None:
        # Outermost: every request is counted and timed, those refused before routing too.
        app.add_middleware(
            MetricsMiddleware,
            metrics=metrics,
            root=settings.url_prefix,
            public=settings.metrics_public,
        )
    app.include_router(health.router)
    if metrics is not None:
        app.include_router(metrics_api.router, tags=["Administration"])
    app.include_router(audit_api.router, tags=["Administration"])
    prefix = settings.url_prefix
    for module in (stow, qido, wado, frames, rendered, delete, capabilities):
        app.include_router(module.router, prefix=prefix, tags=["DICOMweb"])
    if prefix:
        app.add_api_route(
            prefix, capabilities.service_capabilities, methods=["OPTIONS"], tags=["DICOMweb"]
        )
    return app


def app_from_environment() -> FastAPI:
    """Factory for ``uvicorn --factory`` (used by ``serve --workers N``)."""
    return create_app(Settings())
