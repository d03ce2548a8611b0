"""Auditing every request that touches images, metadata or the audit trail.

`AuditMiddleware` sits inside the authentication middleware. Route handlers report what a
request touched into a per-request `AuditCollector` (``report_refs``, ``report_store``);
when the handler starts its response, the middleware turns the route, the caller, the
status and the report into audit records and waits until they are on disk - only then does
the response go out. When the records cannot be written the client gets 503 instead of its
response (and while the store is failing, requests are refused up front): the archive does
not serve data it cannot account for.

Refused requests are recorded by the hooks the authentication code calls:
`record_auth_failure` (401) and `record_forbidden` (403).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio
import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb_server.api.errors import error_response
from dicomweb_server.api.urls import base_url
from dicomweb_server.audit import messages
from dicomweb_server.audit.messages import (
    ActiveParticipant,
    AuditMessage,
    PatientGroup,
    Touched,
    group_by_patient,
    outcome_of_status,
)
from dicomweb_server.audit.store import AuditUnavailable
from dicomweb_server.audit.trail import AuditRecord, AuditTrail, Caller, now
from dicomweb_server.auth.permissions import PUBLIC_PATHS, table_key
from dicomweb_server.auth.principal import SCOPE_KEY, Permission, Principal
from dicomweb_server.dicom.uids import is_valid_uid
from dicomweb_server.index.lookup import InstanceRef

log = logging.getLogger(__name__)

#: Where the middleware leaves the request's collector in the ASGI scope's state.
COLLECTOR_KEY = "audit"


class Kind(Enum):
    """What a route does, as far as the audit trail is concerned."""

    STORE = "store"  # 110104 C/R at the receiver, per patient
    QUERY = "query"  # 110112
    RETRIEVE = "retrieve"  # 110104 R, the archive sends instances
    ACCESS = "access"  # 110103 R: metadata, bulk data, frames, rendered, thumbnails
    DELETE_STUDY = "delete-study"  # 110105
    DELETE_INSTANCES = "delete-instances"  # 110103 D
    AUDIT_LOG = "audit-log"  # 110101


_STUDY = "{root}/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"

#: Every route and what it is audited as; routes missing here carry no patient data.
ROUTE_KINDS: dict[tuple[str, str], Kind] = {
    ("POST", "{root}/studies"): Kind.STORE,
    ("POST", _STUDY): Kind.STORE,
    ("GET", "{root}/studies"): Kind.QUERY,
    ("GET", "{root}/series"): Kind.QUERY,
    ("GET", "{root}/instances"): Kind.QUERY,
    ("GET", _STUDY + "/series"): Kind.QUERY,
    ("GET", _STUDY + "/instances"): Kind.QUERY,
    ("GET", _SERIES + "/instances"): Kind.QUERY,
    ("GET", _STUDY): Kind.RETRIEVE,
    ("GET", _SERIES): Kind.RETRIEVE,
    ("GET", _INSTANCE): Kind.RETRIEVE,
    ("GET", _STUDY + "/metadata"): Kind.ACCESS,
    ("GET", _SERIES + "/metadata"): Kind.ACCESS,
    ("GET", _INSTANCE + "/metadata"): Kind.ACCESS,
    ("GET", _INSTANCE + "/bulk/{path:path}"): Kind.ACCESS,
    ("GET", _INSTANCE + "/frames/{frames}"): Kind.ACCESS,
    ("GET", _STUDY + "/rendered"): Kind.ACCESS,
    ("GET", _SERIES + "/rendered"): Kind.ACCESS,
    ("GET", _INSTANCE + "/rendered"): Kind.ACCESS,
    ("GET", _INSTANCE + "/frames/{frames}/rendered"): Kind.ACCESS,
    ("GET", _STUDY + "/thumbnail"): Kind.ACCESS,
    ("GET", _SERIES + "/thumbnail"): Kind.ACCESS,
    ("GET", _INSTANCE + "/thumbnail"): Kind.ACCESS,
    ("DELETE", _STUDY): Kind.DELETE_STUDY,
    ("DELETE", _SERIES): Kind.DELETE_INSTANCES,
    ("DELETE", _INSTANCE): Kind.DELETE_INSTANCES,
    ("GET", "/admin/audit"): Kind.AUDIT_LOG,
}

#: Routes deliberately not audited: probes, the capabilities description, API docs, and
#: metrics (no patient data; a record per scrape would bury the trail). Refused scrapes are
#: still recorded, as every 401 and 403 is.
NOT_AUDITED: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("OPTIONS", "{root}"),
        ("OPTIONS", "{root}/"),
        ("OPTIONS", "{root}/{path:path}"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc"),
    }
)


class StoreResult(Enum):
    CREATED = "C"  # the archive did not hold the instance
    PRESENT = "R"  # it held identical bytes already (A.5.3.7: "R")
    FAILED = "failed"


@dataclass
class AuditCollector:
    """What one request touched, filled in by its handler."""

    touched: list[Touched] | None = None
    stored: list[tuple[Touched | None, StoreResult, str]] | None = None
    recorded: bool = False
    refused: bool = False
    forbidden: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class _AuditRefused(Exception):
    """Raised from ``send`` when a response's records cannot be written."""


# --- Reporting from handlers -----------------------------------------------------------------


def collector(request: Request) -> AuditCollector | None:
    found: AuditCollector | None = request.scope.get("state", {}).get(COLLECTOR_KEY)
    return found


def touched_of(ref: InstanceRef) -> Touched:
    return Touched(
        study=ref.study_instance_uid,
        patient_id=ref.patient_id,
        patient_name=ref.patient_name,
        series=ref.series_instance_uid,
        sop_class=ref.sop_class_uid,
        sop_instance=ref.sop_instance_uid,
    )


def report_refs(request: Request, refs: Iterable[InstanceRef]) -> None:
    """A read or delete handler names the instances it serves or removes."""
    found = collector(request)
    if found is not None:
        found.touched = [touched_of(ref) for ref in refs]


def patient_of(metadata: dict[str, Any]) -> tuple[str | None, str | None]:
    """Patient ID and name of a parsed instance's DICOM JSON, the name as the index keeps it."""
    from dicomweb_server.dicom.values import normalize_pn, pn_to_text

    def first(tag: str) -> Any:
        values = (metadata.get(tag) or {}).get("Value") or [None]
        return values[0]

    patient_id = first("00100020")
    name = first("00100010")
    name_text = normalize_pn(pn_to_text(name)) if name is not None else None
    return (str(patient_id) if patient_id is not None else None), name_text


def report_store(
    request: Request, outcomes: Sequence[Any], patients: dict[int, tuple[str | None, str | None]]
) -> None:
    """STOW-RS names each part's outcome (``services.store.StoreOutcome``) and patient
    (keyed by ``id(outcome)``; parts that never parsed have none)."""
    found = collector(request)
    if found is None:
        return
    stored: list[tuple[Touched | None, StoreResult, str]] = []
    for outcome in outcomes:
        patient_id, patient_name = patients.get(id(outcome), (None, None))
        item = None
        if outcome.study_instance_uid:
            item = Touched(
                study=outcome.study_instance_uid,
                patient_id=patient_id,
                patient_name=patient_name,
                series=outcome.series_instance_uid,
                sop_class=outcome.sop_class_uid,
                sop_instance=outcome.sop_instance_uid,
            )
        if outcome.stored and outcome.failure_reason is None:
            result = StoreResult.PRESENT if outcome.already_present else StoreResult.CREATED
            stored.append((item, result, ""))
        else:
            stored.append((item, StoreResult.FAILED, outcome.message or "not stored"))
    found.stored = stored


# --- The middleware --------------------------------------------------------------------------


def trail_of(scope: Scope) -> AuditTrail | None:
    app = scope.get("app")
    state = getattr(app, "state", None)
    trail: AuditTrail | None = getattr(state, "audit", None)
    return trail


def route_kind(scope: Scope) -> Kind | None:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return None
    method = scope["method"]
    method = "GET" if method == "HEAD" else method
    root = scope["app"].state.settings.url_prefix
    return ROUTE_KINDS.get(table_key(method, path, scope["path"], root))


class AuditMiddleware:
    """Writes each audited request's records durably before its response goes out."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        trail = trail_of(scope) if scope["type"] == "http" else None
        if trail is None or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        if not trail.available:
            await _unavailable(scope, receive, send)
            return
        found = AuditCollector()
        scope.setdefault("state", {})[COLLECTOR_KEY] = found

        async def audited_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not found.recorded:
                found.recorded = True
                await _record_response(scope, trail, found, message)
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except BaseException as exc:
            if found.refused:
                # The handler's response never started: answer 503 in its place.
                if not isinstance(exc, anyio.get_cancelled_exc_class()):
                    await _unavailable(scope, receive, send)
                    return
                raise
            if not found.recorded and isinstance(exc, Exception):
                # An unhandled error becomes a 500 outside: record the failed attempt.
                found.recorded = True
                try:
                    await _record_response(
                        scope, trail, found, {"status": 500, "headers": []}, strict=False
                    )
                except Exception:
                    log.exception("could not audit a failed request")
            raise


async def _unavailable(scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(
        Request(scope, receive),
        503,
        "the audit trail cannot be written, so the request is refused; retry later",
        {"Retry-After": "5"},
    )
    await response(scope, receive, send)


async def _record_response(
    scope: Scope, trail: AuditTrail, found: AuditCollector, message: Message, strict: bool = True
) -> None:
    status = int(message["status"])
    if found.forbidden:
        return  # the Security Alert was recorded by `record_forbidden`
    kind = route_kind(scope)
    if kind is None:
        return
    records: list[AuditRecord] = []
    try:
        records = await build_records(scope, trail, kind, found, status, _warning(message))
        if records:
            await trail.record(records)
    except Exception as exc:
        if not strict:
            raise
        log.error(
            "%s %s: refused with 503, the audit trail failed: %s",
            scope["method"],
            scope["path"],
            exc,
            exc_info=not isinstance(exc, AuditUnavailable),
        )
        # What could not be stored goes to the error log, the last place left to keep it.
        for record in records:
            log.error("unwritten audit record: %s", record_line(record))
        found.refused = True
        raise _AuditRefused(str(exc)) from exc


def _warning(message: Message) -> str | None:
    """The explanation the archive put into an error response's ``Warning`` header."""
    for name, value in message.get("headers", []):
        if name.lower() == b"warning":
            text: str = value.decode("latin-1")
            start, end = text.find('"'), text.rfind('"')
            return text[start + 1 : end] if 0 <= start < end else text
    return None


def client_address(scope: Scope) -> str | None:
    """The client's address as the ASGI server reports it (which honours X-Forwarded-For
    only from the proxies the server trusts)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def caller_of(scope: Scope) -> Caller:
    """The caller named in records: the validated principal and the client address."""
    principal: Principal | None = scope.get("state", {}).get(SCOPE_KEY)
    address = client_address(scope)
    if principal is None:
        return Caller(subject="unauthenticated", address=address)
    return Caller(
        subject=principal.subject,
        issuer=principal.issuer,
        token_id=principal.token_id,
        client_id=principal.client_id,
        address=address,
    )


#: Query parameters whose values are never recorded: RFC 6750 2.3 bearer tokens.
SECRET_PARAMETERS = frozenset({b"access_token"})


def redact_query(raw: bytes) -> bytes:
    """The query string as sent, but with the value of any ``access_token`` replaced: a
    token must never reach the audit trail, even one the archive refuses."""
    if b"access_token" not in raw.lower() and b"%" not in raw:
        return raw
    pairs = []
    for pair in raw.split(b"&"):
        name, equals, _ = pair.partition(b"=")
        if equals and unquote_to_bytes(name.replace(b"+", b" ")).lower() in SECRET_PARAMETERS:
            pair = name + equals + b"[redacted]"
        pairs.append(pair)
    return b"&".join(pairs)


def _target(scope: Scope) -> str:
    query = redact_query(scope.get("query_string", b"")).decode("latin-1")
    path: str = scope.get("root_path", "") + scope["path"]
    return f"{path}?{query}" if query else path


async def build_records(
    scope: Scope,
    trail: AuditTrail,
    kind: Kind,
    found: AuditCollector,
    status: int,
    explanation: str | None = None,
) -> list[AuditRecord]:
    """The records of one audited request."""
    request = Request(scope)
    settings = scope["app"].state.settings
    root = base_url(request, settings)
    caller = caller_of(scope)
    archive = trail.archive(root)
    time = now()
    outcome = outcome_of_status(status)
    description = None
    if status >= 400:
        description = f"HTTP {status}" + (f": {explanation}" if explanation else "")
    context: dict[str, Any] = {
        "caller": caller,
        "method": scope["method"],
        "path": scope.get("root_path", "") + scope["path"],
        "status": status,
    }
    source = trail.source_id

    if kind is Kind.QUERY:
        raw = redact_query(scope.get("query_string", b""))
        resource = root + scope["path"][len(settings.url_prefix) :]
        message = messages.query(
            outcome=outcome,
            time=time,
            source_id=source,
            requestor=caller.participant(),
            responder=archive,
            resource=resource,
            query_string=raw,
            description=description,
        )
        return [AuditRecord(message, query=_target(scope), **context)]

    if kind is Kind.AUDIT_LOG:
        filters = found.extra.get("filters")
        message = messages.audit_log_used(
            outcome=outcome,
            time=time,
            source_id=source,
            participants=(caller.participant(), archive),
            log_uri=str(request.url.replace(query=None)),
            filters=filters.encode() if filters else None,
            description=description,
        )
        return [AuditRecord(message, query=_target(scope), **context)]

    if kind is Kind.STORE:
        return _store_records(found, time, source, caller, archive, status, description, context)

    touched = found.touched
    if touched is None and status < 400:
        touched = await anyio.to_thread.run_sync(_lookup, scope)
    if not touched:
        # Nothing was found or the request failed before it looked: name what it asked for.
        study = scope.get("path_params", {}).get("study")
        touched = [Touched(study=study)] if study and is_valid_uid(study) else []
        if status < 400:
            outcome, description = messages.MINOR_FAILURE, "nothing was found"
    records = []
    groups = group_by_patient(touched) or [PatientGroup(None)]
    for group in groups:
        message = _instances_message(
            kind, group, time, source, caller, archive, outcome, description
        )
        records.append(_with_objects(AuditRecord(message, **context), group))
    return records


def _instances_message(
    kind: Kind,
    group: PatientGroup,
    time: datetime,
    source: str,
    caller: Caller,
    archive: ActiveParticipant,
    outcome: int,
    description: str | None,
) -> AuditMessage:
    if kind is Kind.RETRIEVE:
        return messages.instances_transferred(
            action="R",
            outcome=outcome,
            time=time,
            source_id=source,
            sender=archive,
            receiver=caller.participant(),
            group=group,
            description=description,
        )
    participants = (caller.participant(), archive)
    if kind is Kind.DELETE_STUDY:
        return messages.study_deleted(
            outcome=outcome,
            time=time,
            source_id=source,
            participants=participants,
            group=group,
            description=description,
        )
    return messages.instances_accessed(
        action="D" if kind is Kind.DELETE_INSTANCES else "R",
        outcome=outcome,
        time=time,
        source_id=source,
        participants=participants,
        group=group,
        description=description,
    )


def _store_records(
    found: AuditCollector,
    time: datetime,
    source: str,
    caller: Caller,
    archive: ActiveParticipant,
    status: int,
    description: str | None,
    context: dict[str, Any],
) -> list[AuditRecord]:
    """STOW-RS: one message per patient and result (created, already held, failed)."""
    sender = caller.participant()
    stored = found.stored or []
    if not stored:
        message = messages.instances_transferred(
            action="C",
            outcome=outcome_of_status(status) or messages.MINOR_FAILURE,
            time=time,
            source_id=source,
            sender=sender,
            receiver=archive,
            group=PatientGroup(None),
            description=description or "no instance was received",
        )
        return [AuditRecord(message, **context)]
    records = []
    for result in (StoreResult.CREATED, StoreResult.PRESENT, StoreResult.FAILED):
        items = [(item, text) for item, kind, text in stored if kind is result]
        if not items:
            continue
        known = [item for item, _ in items if item is not None]
        groups = group_by_patient(known)
        if len(known) < len(items) and not any(group.patient is None for group in groups):
            groups.append(PatientGroup(None))  # parts that never parsed: no patient, no study
        for group in groups:
            failed = result is StoreResult.FAILED
            text = None
            if failed:
                reasons = sorted(
                    {
                        text
                        for item, text in items
                        if (item is None and group.patient is None)
                        or (item is not None and _patient_matches(item, group))
                    }
                )
                text = "; ".join(reasons)[:2000] or "not stored"
            message = messages.instances_transferred(
                action="R" if result is StoreResult.PRESENT else "C",
                outcome=messages.MINOR_FAILURE if failed else messages.SUCCESS,
                time=time,
                source_id=source,
                sender=sender,
                receiver=archive,
                group=group,
                description=text,
            )
            records.append(_with_objects(AuditRecord(message, **context), group))
    return records


def _patient_matches(item: Touched, group: PatientGroup) -> bool:
    if group.patient is None:
        return item.patient_id is None and item.patient_name is None
    return (item.patient_id or "") == group.patient.patient_id and (
        item.patient_name or ""
    ) == group.patient.name


def _with_objects(record: AuditRecord, group: PatientGroup) -> AuditRecord:
    if group.patient is not None:
        record.patients = [group.patient.patient_id]
    record.studies = list(group.studies)
    return record


def _lookup(scope: Scope) -> list[Touched]:
    """The instances a read path names, from the index (for handlers that report none)."""
    from dicomweb_server.index import lookup

    params = scope.get("path_params", {})
    study, series, instance = params.get("study"), params.get("series"), params.get("instance")
    if not study or not all(is_valid_uid(uid) for uid in (study, series, instance) if uid):
        return []
    archive = scope["app"].state.archive
    with archive.reads() as session:
        refs = lookup.find_instances(session, study, series, instance)
    return [touched_of(ref) for ref in refs]


# --- Hooks for the authentication code -------------------------------------------------------


async def record_auth_failure(scope: Scope, reason: str) -> None:
    """401: the request carried no valid access token - a failed login (A.5.3.12).

    ``reason`` is what the authentication middleware tells the client; it never holds the
    token. Failing to record is logged, never raised: the request is refused anyway.
    """
    trail = trail_of(scope)
    if trail is None:
        return
    try:
        request = Request(scope)
        # Without a valid token nobody is authenticated: no claim of it is trusted or kept.
        caller = Caller(subject="unauthenticated", address=client_address(scope))
        message = messages.user_authentication(
            time=now(),
            source_id=trail.source_id,
            user=caller.participant(),
            node=trail.archive(base_url(request, scope["app"].state.settings)),
            description=f"{scope['method']} {scope['path']}: {reason}",
        )
        await trail.record(
            [
                AuditRecord(
                    message,
                    caller=caller,
                    method=scope["method"],
                    path=scope["path"],
                    status=401,
                    query=_target(scope),
                )
            ]
        )
    except Exception:
        log.exception("could not record a refused authentication in the audit trail")


async def record_forbidden(
    request: Request, principal: Principal, permission: Permission | None
) -> None:
    """403: a valid token without the permission the route needs - a Security Alert
    (A.5.3.11, type 110132 "Use of Restricted Function"). Never raises."""
    scope = request.scope
    found = scope.get("state", {}).get(COLLECTOR_KEY)
    if isinstance(found, AuditCollector):
        found.forbidden = True
    trail = trail_of(scope)
    if trail is None:
        return
    try:
        caller = caller_of(scope)
        needed = permission.value if permission is not None else "(none: unknown route)"
        target = f"{request.method} {request.url.path}"
        alert = f"{caller.subject} lacks the '{needed}' permission for {target}"
        message = messages.security_alert(
            time=now(),
            source_id=trail.source_id,
            reporter=trail.archive(base_url(request, scope["app"].state.settings)),
            performer=caller.participant(requestor=False),
            subject_uri=str(request.url.replace(query=None)),
            subject_name=target,
            alert=alert,
        )
        await trail.record(
            [
                AuditRecord(
                    message,
                    caller=caller,
                    method=request.method,
                    path=request.url.path,
                    status=403,
                    query=_target(scope),
                )
            ]
        )
    except Exception:
        log.exception("could not record a refused request in the audit trail")


def record_line(record: AuditRecord) -> str:
    """A record as its JSON line (for logs when the store itself failed)."""
    return orjson.dumps(record.to_json()).decode()
