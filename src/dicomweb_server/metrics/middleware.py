"""Request metrics: a pure ASGI middleware, outermost, so it times and counts every request,
including those refused before routing (401, 414).

The transaction is read from the route the router left in the scope once the request is
done, so nothing is matched twice; each (transaction, status) pair's metric children are
looked up once and cached. Per request that leaves a clock read at each end, two gauge
updates, a counter increment and a histogram observation, made just before the last body
message is sent.

With ``DICOMWEB_METRICS_PUBLIC`` the exposition itself is answered here, in front of
authentication, like the probes; otherwise ``/metrics`` is an ordinary route that needs the
``admin`` permission (``api/metrics.py``).
"""

from __future__ import annotations

from time import perf_counter

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb_server.metrics.registry import ArchiveMetrics, classify_backend_error
from dicomweb_server.metrics.transactions import TransactionResolver

#: Path of the exposition.
METRICS_PATH = "/metrics"

#: Answers that end with their headers (RFC 9110 6.4.1): the server may write them out before
#: the application's (empty) body message, so they are counted at the headers.
BODILESS_STATUSES = frozenset({204, 304})


async def exposition_response(metrics: ArchiveMetrics, request: Request) -> Response:
    """The scrape's answer (read off the event loop: it may read every worker's file)."""
    body, content_type = await anyio.to_thread.run_sync(
        metrics.exposition, request.headers.get("accept")
    )
    return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


class MetricsMiddleware:
    """Counts and times every HTTP request by transaction and status code."""

    def __init__(
        self, app: ASGIApp, metrics: ArchiveMetrics, root: str, public: bool = False
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.public = public
        self.transaction_of = TransactionResolver(root)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        started = perf_counter()
        if self.public and scope["path"] == METRICS_PATH and scope["method"] in ("GET", "HEAD"):
            response = await exposition_response(metrics, Request(scope, receive))
            await response(scope, receive, send)
            metrics.observe_request("metrics", response.status_code, perf_counter() - started)
            return
        status = 0
        recorded = False
        head = scope["method"] == "HEAD"

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                metrics.in_flight.dec()
                # No response started: the server answers 500 (or the client went away).
                metrics.observe_request(
                    self.transaction_of(scope), status or 500, perf_counter() - started
                )

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if head or status in BODILESS_STATUSES:
                    # The client has its whole answer with the headers: count it now.
                    record()
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Counted before the last byte leaves: a client that has its answer and then
                # scrapes (any worker) always finds its request counted.
                record()
            await send(message)

        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_counted)
        except Exception as exc:
            # A blob store or index error after the response started reaches no error
            # handler (Starlette raises RuntimeError from it instead): count it here.
            cause = exc.__cause__
            if status and isinstance(exc, RuntimeError) and cause is not None:
                backend = classify_backend_error(cause)
                if backend is not None:
                    metrics.observe_backend_error(backend)
            raise
        finally:
            record()
