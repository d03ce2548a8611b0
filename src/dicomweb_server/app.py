"""The ASGI application factory; nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from dicomweb_server import __version__
from dicomweb_server.api import delete, health, qido, stow, wado
from dicomweb_server.api.errors import install_error_handlers
from dicomweb_server.services.archive import Archive
from dicomweb_server.services.group_commit import GroupCommitter
from dicomweb_server.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the archive's ASGI app for the given settings (environment by default)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        archive = Archive.open(settings)
        committer = GroupCommitter(archive)
        app.state.archive = archive
        app.state.committer = committer
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
    app.include_router(health.router)
    prefix = settings.url_prefix
    for module in (stow, qido, wado, delete):
        app.include_router(module.router, prefix=prefix, tags=["DICOMweb"])
    return app


def app_from_environment() -> FastAPI:
    """Factory for ``uvicorn --factory`` (used by ``serve --workers N``)."""
    return create_app(Settings())
