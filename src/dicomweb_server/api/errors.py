"""The one place where errors become HTTP responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from dicomweb_server.errors import ArchiveError
from dicomweb_server.metrics.registry import count_backend_error

log = logging.getLogger(__name__)


#: Control characters become spaces: a header value may not hold them (RFC 9110 5.5).
_CONTROLS = {code: " " for code in (*range(0x20), 0x7F)}


def warning_value(request: Request, text: str) -> str:
    """An RFC 7234 ``Warning: 299`` value, the form PS3.18 8.3.5 uses for explanations.

    The text may quote request data: non-ASCII characters are written as Python escapes,
    since a header value is bytes (ASCII in practice) and cannot carry them.
    """
    host = request.headers.get("host", "dicomweb-server")
    ascii_text = text.translate(_CONTROLS).encode("ascii", "backslashreplace").decode("ascii")
    clean = ascii_text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 {host}: "{clean}"'


def error_response(
    request: Request, status_code: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    return PlainTextResponse(
        message + "\n",
        status_code=status_code,
        headers={**(headers or {}), "Warning": warning_value(request, message)},
    )


#: How long a client should wait before retrying a request refused because the index or
#: the blob store failed (RFC 9110 10.2.3): as long as after an audit trail failure.
RETRY_AFTER = {"Retry-After": "5"}


def backend_error_response(request: Request, exc: Exception) -> Response | None:
    """The answer to an archive, index or storage error; ``None`` for any other exception.

    Shared by the exception handlers and the fast lane, which answers without them. A 503
    says when to retry, so that gateways and modalities that queue their stores back off
    instead of hammering a recovering archive.
    """
    if isinstance(exc, ArchiveError):
        headers = exc.headers
        if exc.status_code >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        if exc.status_code == 503:
            headers = {**RETRY_AFTER, **headers}
        count_backend_error(request.scope, exc)  # a StorageError; other ArchiveErrors are not
        return error_response(request, exc.status_code, exc.message, headers)
    if isinstance(exc, DBAPIError):
        log.error("%s %s: index error: %s", request.method, request.url.path, exc)
        count_backend_error(request.scope, exc)
        return error_response(
            request, 503, "the index database is unavailable; retry later", RETRY_AFTER
        )
    if isinstance(exc, OSError):
        log.error("%s %s: storage error: %s", request.method, request.url.path, exc)
        count_backend_error(request.scope, exc)
        return error_response(
            request,
            503,
            f"the blob store is unavailable ({exc.strerror or exc}); retry later",
            RETRY_AFTER,
        )
    return None


def install_error_handlers(app: FastAPI) -> None:
    async def _backend_error(request: Request, exc: Exception) -> Response:
        response = backend_error_response(request, exc)
        assert response is not None  # registered for exactly the types it answers
        return response

    for kind in (ArchiveError, DBAPIError, OSError):
        app.add_exception_handler(kind, _backend_error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        details = "; ".join(
            f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg')}"
            for error in exc.errors()
        )
        return error_response(request, 400, f"invalid request: {details}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(request, exc.status_code, str(exc.detail))
