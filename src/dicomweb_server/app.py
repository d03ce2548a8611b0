"""The ASGI application factory; nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from dicomweb_server import __version__
from dicomweb_server.api import capabilities, delete, frames, health, qido, rendered, stow, wado
from dicomweb_server.api.errors import install_error_handlers
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
]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the archive's ASGI app for the given settings (environment by default)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        archive = Archive.open(settings)
        committer = GroupCommitter(archive)
        app.state.archive = archive
        app.state.committer = committer
        # Decoding, encoding and rendering share a few threads of their own, so CPU-heavy
        # pixel work queues here instead of filling the thread pool that every other
        # request's file and index work runs in.
        app.state.imaging_limiter = anyio.CapacityLimiter(settings.imaging_workers)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(committer.close)
            archive.close()

    app = FastAPI(
        title="dicomweb-server",
        version=__version__,
        summary="DICOMweb origin server: STOW-RS, QIDO-RS and WADO-RS",
        lifespan=lifespan,
    )
    install_error_handlers(app)
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
    app.include_router(health.router)
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
