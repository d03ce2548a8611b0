"""Reading the audit trail over HTTP: ``GET /admin/audit`` (needs the ``admin`` permission).

The answer is the matching records as JSON lines, oldest first. Reading is itself audited
(110101 "Audit Log Used", with the filters), by the audit middleware.
"""

from __future__ import annotations

from datetime import datetime

import anyio
from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.audit.middleware import collector
from dicomweb_server.audit.store import AuditFilter, iter_lines, parse_time
from dicomweb_server.audit.trail import AuditTrail
from dicomweb_server.errors import BadRequest

router = APIRouter()

MEDIA_TYPE = "application/x-ndjson"


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an ISO 8601 date or date-time, not {value!r}") from exc


@router.get("/admin/audit")
async def read_audit_trail(
    request: Request,
    user: str | None = None,
    patient: str | None = None,
    study: str | None = None,
    event: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = Query(default=10_000, ge=1, le=1_000_000),
) -> Response:
    """Audit records matching every given filter: user (token ``sub``), Patient ID, Study
    Instance UID, event ID (e.g. 110104), and a time span (ISO 8601, UTC when no zone)."""
    criteria = AuditFilter(
        user=user,
        patient=patient,
        study=study,
        event=event,
        since=_time(since, "since"),
        until=_time(until, "until"),
    )
    found = collector(request)
    if found is not None:
        found.extra["filters"] = criteria.as_query()
    trail: AuditTrail = request.app.state.audit

    def read() -> list[bytes]:
        lines: list[bytes] = []
        for line in iter_lines(trail.directory, criteria):
            lines.append(line)
            if len(lines) >= limit:
                break
        return lines

    lines = await anyio.to_thread.run_sync(read)
    return Response(b"".join(lines), media_type=MEDIA_TYPE)
