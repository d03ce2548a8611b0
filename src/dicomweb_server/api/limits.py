"""Request limits checked before routing: the query string length (414 URI Too Long)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomweb_server.api.errors import error_response


class QueryStringLimitMiddleware:
    """Answer 414 to any HTTP request whose query string is longer than `max_bytes`.

    Pure ASGI, so the body is never read; the answer has the same form as every other error
    (plain text and a ``Warning: 299`` header, ``api/errors.py``).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(scope.get("query_string", b"")) > self.max_bytes:
            request = Request(scope)
            response = error_response(
                request,
                414,
                f"the query string is longer than {self.max_bytes} bytes "
                "(DICOMWEB_MAX_QUERY_STRING_BYTES)",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
