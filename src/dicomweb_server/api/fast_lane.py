"""The fast lane: the hottest requests answered without the framework's routing.

A viewer scrolling a stack, or a pipeline pulling a series, sends hundreds of requests a
second that are all the same few steps: one index row, one read, a little multipart framing.
Through FastAPI those steps cost several times the work itself (matching every route,
solving dependencies, wrapping handlers, two thread hand-offs). This layer sits where the
router would be, inside authentication, auditing and metrics, and recognises these requests
of an unrestricted reader:

- a single instance as stored (``multipart/related; type="application/dicom"`` or
  ``application/dicom``, no byte range, no validator);
- a single frame as stored;
- the DICOM JSON metadata of a study, series or instance;
- an instance or one of its frames rendered with the default parameters;

and it hands QIDO-RS searches, and STOW-RS stores of an unrestricted writer, straight to
their routes' handlers. It answers with one thread hand-off and the same functions the routes
use, so the bytes, headers, audit records and metrics are the routes' own. Whatever it does
not recognise, or whatever would answer anything but 200 (not found, not acceptable, a
transcoding, a patient-scoped token, a failing store), it hands to the application unchanged
before sending a byte: the full routes stay the one definition of every other answer. A
store cannot be handed on once its body is being read, so its errors are answered here by the
same function the application's error handlers use.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomweb_server.api import frames as frames_api
from dicomweb_server.api import qido, rendered, stow, wado
from dicomweb_server.api.encoding import DICOM_XML
from dicomweb_server.api.errors import backend_error_response
from dicomweb_server.api.frame_media import choose_frame_representation
from dicomweb_server.api.media import MediaRange, parse_accept
from dicomweb_server.api.negotiation import negotiate
from dicomweb_server.api.urls import base_url
from dicomweb_server.audit.middleware import COLLECTOR_KEY, AuditCollector, touched_of
from dicomweb_server.auth.principal import SCOPE_KEY, Permission, Principal
from dicomweb_server.dicom.uids import is_valid_uid
from dicomweb_server.index.lookup import InstanceRef
from dicomweb_server.index.qido_keys import QueryLevel
from dicomweb_server.services import pixels, retrieve
from dicomweb_server.services.archive import Archive
from dicomweb_server.settings import Settings
from dicomweb_server.storage import WouldWait

#: Request headers that make an answer conditional or partial: the full routes handle them.
_CONDITIONAL = frozenset({b"range", b"if-range", b"if-none-match", b"if-match"})

_ACCEPT_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class _Route:
    """Stands for a matched route in the scope: audit, permissions and metrics read its
    ``path`` template exactly as they read a FastAPI route's."""

    path: str


class _NotHere(Exception):
    """The request needs something the fast lane does not do; the application answers it."""


Answer = Callable[[Scope, Receive, Send], Awaitable[None]]


class FastLane:
    """Pure ASGI: answers the hottest read requests itself, hands every other to `app`."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        root = settings.url_prefix
        uid = r"([^/]+)"
        self._pattern = re.compile(
            rf"{re.escape(root)}/studies/{uid}(?:/series/{uid}(?:/instances/{uid}"
            r"(?:/frames/([0-9]{1,9}))?)?)?(/metadata|/rendered)?"
        )
        self._search_pattern = re.compile(
            rf"{re.escape(root)}(?:/studies/{uid}(?:/series/{uid})?)?/(studies|series|instances)"
        )
        self._store_pattern = re.compile(rf"{re.escape(root)}/studies(?:/{uid})?")
        study = root + "/studies/{study}"
        series = study + "/series/{series}"
        instance = series + "/instances/{instance}"
        self._routes = {
            "instance": _Route(instance),
            "frames": _Route(instance + "/frames/{frames}"),
            "study-metadata": _Route(study + "/metadata"),
            "series-metadata": _Route(series + "/metadata"),
            "instance-metadata": _Route(instance + "/metadata"),
            "instance-rendered": _Route(instance + "/rendered"),
            "frames-rendered": _Route(instance + "/frames/{frames}/rendered"),
            "studies": _Route(root + "/studies"),
            "study": _Route(study),
            "series": _Route(root + "/series"),
            "instances": _Route(root + "/instances"),
            "study-series": _Route(study + "/series"),
            "study-instances": _Route(study + "/instances"),
            "series-instances": _Route(series + "/instances"),
        }
        self._accepts: dict[bytes, list[MediaRange]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal: Principal | None = scope.get("state", {}).get(SCOPE_KEY)
        if scope["method"] == "POST":
            store = self._store_pattern.fullmatch(scope["path"])
            if (
                store is None
                or principal is None
                or principal.patient is not None
                or not principal.allows(Permission.WRITE)
            ):
                await self.app(scope, receive, send)
                return
            await self._store(scope, receive, send, store.group(1))
            return
        if scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if (
            principal is None
            or principal.patient is not None
            or not principal.allows(Permission.READ)
        ):
            await self.app(scope, receive, send)
            return
        search = self._search_pattern.fullmatch(scope["path"])
        if search is not None:
            await self._search(scope, receive, send, *search.groups())
            return
        match = None if scope.get("query_string") else self._pattern.fullmatch(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        study, series, instance, frame, suffix = match.groups()
        if suffix == "/rendered":
            if instance is None:
                await self.app(scope, receive, send)
                return
            kind = "frames-rendered" if frame else "instance-rendered"
        elif suffix:
            level = "instance" if instance else "series" if series else "study"
            kind = f"{level}-metadata"
        elif frame:
            kind = "frames"
        elif instance:
            kind = "instance"
        else:
            await self.app(scope, receive, send)
            return
        accept = self._accept(scope)
        if accept is None or not all(
            is_valid_uid(uid) for uid in (study, series, instance) if uid is not None
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        archive: Archive = scope["app"].state.archive
        try:
            if kind == "frames":
                answer, refs = await _now_or_in_thread(
                    archive,
                    functools.partial(
                        _frame, archive, request, accept, study, series, instance, int(frame)
                    ),
                )
            elif kind == "instance":
                answer, refs = await _now_or_in_thread(
                    archive,
                    functools.partial(_instance, archive, request, accept, study, series, instance),
                )
            elif kind.endswith("rendered"):
                answer, refs = await anyio.to_thread.run_sync(
                    _rendered,
                    archive,
                    request,
                    (study, series, instance),
                    int(frame or 1),
                    limiter=scope["app"].state.imaging_limiter,
                )
            else:
                answer, refs = await anyio.to_thread.run_sync(
                    _metadata, archive, request, accept, study, series, instance
                )
        except Exception:
            # Nothing is sent yet: the route answers it, errors included (a failing blob
            # store or index too, which it counts and answers 503), exactly as always.
            await self.app(scope, receive, send)
            return
        path_params = {"study": study}
        if series is not None:
            path_params["series"] = series
        if instance is not None:
            path_params["instance"] = instance
        if frame is not None:
            path_params["frames"] = frame
        scope["route"] = self._routes[kind]
        scope["path_params"] = path_params
        found: AuditCollector | None = scope.get("state", {}).get(COLLECTOR_KEY)
        if found is not None:
            found.touched = [touched_of(ref) for ref in refs]
        await answer(scope, receive, send)

    async def _search(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        study: str | None,
        series: str | None,
        target: str,
    ) -> None:
        """QIDO-RS: the search route's own handler, without routing and dependency solving."""
        if series is not None:
            kind = "series-instances" if target == "instances" else None
        elif study is not None:
            kind = f"study-{target}" if target != "studies" else None
        else:
            kind = target
        if kind is None:
            await self.app(scope, receive, send)
            return
        level = _LEVELS[target]
        path_params = {name: uid for name, uid in (("study", study), ("series", series)) if uid}
        scope["route"] = self._routes[kind]
        scope["path_params"] = path_params
        archive: Archive = scope["app"].state.archive
        try:
            response = await qido.search_response(
                Request(scope, receive), archive, level, study, series
            )
        except Exception:
            # Refused queries (400, 406, ...) and failures are answered by the route.
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    async def _store(self, scope: Scope, receive: Receive, send: Send, study: str | None) -> None:
        """STOW-RS: the store route's own handler; its errors answered as the handlers do."""
        scope["route"] = self._routes["study" if study is not None else "studies"]
        scope["path_params"] = {"study": study} if study is not None else {}
        request = Request(scope, receive)
        try:
            response = await stow.store_response(request, scope["app"].state.archive, study)
        except Exception as exc:
            answer = backend_error_response(request, exc)
            if answer is None:
                raise
            response = answer
        await response(scope, receive, send)

    def _accept(self, scope: Scope) -> list[MediaRange] | None:
        """The parsed Accept header (cached: clients send the same few), or ``None`` when the
        request has none, several, or a conditional header."""
        value: bytes | None = None
        for name, item in scope["headers"]:
            if name == b"accept":
                if value is not None:
                    return None
                value = item
            elif name in _CONDITIONAL:
                return None
        if value is None:
            return None  # answered 406 by the routes, or served with its default there
        ranges = self._accepts.get(value)
        if ranges is None:
            ranges = parse_accept([value.decode("latin-1")])
            if len(self._accepts) >= _ACCEPT_CACHE_SIZE:
                self._accepts.clear()
            self._accepts[value] = ranges
        return ranges


_LEVELS = {
    "studies": QueryLevel.STUDY,
    "series": QueryLevel.SERIES,
    "instances": QueryLevel.INSTANCE,
}


_Found = tuple[Answer, list[InstanceRef]]


async def _now_or_in_thread(archive: Archive, work: Callable[..., _Found]) -> _Found:
    """Run `work` on the event loop when nothing in it waits, else in a worker thread.

    With the index in this process and the bytes in the page cache, a frame or an instance
    is a look-up and a copy, and handing that to a thread and back cost about as much CPU
    as doing it on a 2-core host (in-process, an RLE frame request went from 0.98-1.02 to
    0.82 ms of CPU). What would wait (a PostgreSQL round trip, a disk read, object storage)
    still goes to a thread, so it never holds up the event loop.
    """
    if archive.index_in_process and archive.blobs.reads_now:
        try:
            return work(now=True)
        except WouldWait:
            pass
    return await anyio.to_thread.run_sync(functools.partial(work, now=False))


def _instance(
    archive: Archive,
    request: Request,
    accept: list[MediaRange],
    study: str,
    series: str,
    instance: str,
    *,
    now: bool,
) -> _Found:
    offer, _ = negotiate(accept, wado.INSTANCE_OFFERS)
    if offer is wado.ZIP_OFFER:
        raise _NotHere
    refs = retrieve.find_instances(archive, study, series, instance, now=now)
    ref = refs[0]
    target = retrieve.choose_transfer_syntax(wado.requested_syntaxes(accept, offer), refs)
    syntax = retrieve.delivered_syntax(ref, target)
    if syntax != ref.transfer_syntax_uid or not wado.fits_one_read(archive, ref):
        raise _NotHere
    data = wado.read_stored(archive, ref, now=now)
    if offer is wado.SINGLE_DICOM_OFFER:
        return wado.single_instance_response(ref, syntax, data), refs
    root = base_url(request, archive.settings)
    return wado.instance_parts_response(root, ref, target, data), refs


def _frame(
    archive: Archive,
    request: Request,
    accept: list[MediaRange],
    study: str,
    series: str,
    instance: str,
    number: int,
    *,
    now: bool,
) -> _Found:
    source = pixels.find_frame_source(archive, study, series, instance, now=now)
    pixels.check_frames(source, [number])

    def cannot_decide(stored: str, target: str) -> bool:
        raise _NotHere  # the choice depends on the codecs: the route decides it

    choice = choose_frame_representation(accept, source.transfer_syntax, 1, cannot_decide)
    if not choice.stored:
        raise _NotHere
    data = pixels.read_stored_frame(archive, source, number, now=now)
    if not choice.multipart:
        return frames_api.single_frame_response(choice, source, number, data), [source.instance]
    root = base_url(request, archive.settings)
    response = frames_api.frame_parts_response(root, choice, source, number, data)
    return response, [source.instance]


def _rendered(
    archive: Archive, request: Request, target: tuple[str, str, str], number: int
) -> tuple[Answer, list[InstanceRef]]:
    response, sources = rendered.render_single(archive, request, target, number)
    return response, [source.instance for source in sources]


def _metadata(
    archive: Archive,
    request: Request,
    accept: list[MediaRange],
    study: str,
    series: str | None,
    instance: str | None,
) -> tuple[Answer, list[InstanceRef]]:
    offer, _ = negotiate(accept, wado.METADATA_OFFERS)
    if offer.part_type == DICOM_XML:
        raise _NotHere
    root = base_url(request, archive.settings)
    body, refs = retrieve.metadata_json(archive, root, study, series, instance)
    response: Any = wado.metadata_response(body, offer)
    return response, refs
