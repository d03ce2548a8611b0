"""Retrieve Capabilities: ``OPTIONS`` on the service root or any resource (PS3.18 8.9, Annex H).

The answer is a WADL document (PS3.18 Annex H, media type ``application/vnd.sun.wadl+xml``)
listing each resource, its methods with their transaction names, query parameters and the
media types of requests and responses. ``OPTIONS`` on one resource describes just that
resource; the ``Allow`` header lists its methods (RFC 9110 9.3.7). The same description is
offered as plain JSON for tools that prefer it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server import __version__
from dicomweb_server.api.encoding import DICOM_JSON, DICOM_XML, json_bytes
from dicomweb_server.api.negotiation import Offer, accept_ranges, negotiate
from dicomweb_server.api.urls import base_url
from dicomweb_server.errors import NotFound

router = APIRouter()

WADL = "application/vnd.sun.wadl+xml"
_WADL_NS = "http://wadl.dev.java.net/2009/02"

_SEARCH_PARAMS = ("limit", "offset", "fuzzymatching", "includefield", "{attributeID}")
_RENDER_PARAMS = ("window", "viewport", "quality", "annotation", "iccprofile", "accept")
_MULTI_DICOM = 'multipart/related; type="application/dicom"'
_FRAME_TYPES = (
    'multipart/related; type="application/octet-stream"',
    'multipart/related; type="image/jpeg"',
    'multipart/related; type="image/jls"',
    'multipart/related; type="image/jp2"',
    'multipart/related; type="image/jphc"',
    'multipart/related; type="image/dicom-rle"',
    "application/octet-stream",
)
_RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif")
_SEARCH_TYPES = (DICOM_JSON, "application/json", f'multipart/related; type="{DICOM_XML}"')
_METADATA_TYPES = _SEARCH_TYPES


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    transaction: str
    responses: tuple[str, ...]
    params: tuple[str, ...] = ("accept",)
    requests: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Resource:
    path: str
    methods: tuple[Method, ...]
    pattern: re.Pattern[str] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(self.path))
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))


def _search(transaction: str) -> Method:
    return Method("GET", transaction, _SEARCH_TYPES, _SEARCH_PARAMS)


def _retrieve(transaction: str) -> Method:
    return Method(
        "GET", transaction, (_MULTI_DICOM, "application/zip"), ("accept", "transfer-syntax")
    )


def _store(transaction: str) -> Method:
    return Method("POST", transaction, (DICOM_JSON, DICOM_XML), (), (_MULTI_DICOM,))


def _delete(transaction: str) -> Method:
    return Method("DELETE", transaction, (), ())


def _rendered(transaction: str) -> Method:
    return Method("GET", transaction, _RENDERED_TYPES, _RENDER_PARAMS)


def _thumbnail(transaction: str) -> Method:
    return Method("GET", transaction, _RENDERED_TYPES, ("viewport", "accept"))


_STUDY = "studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"

#: Every resource this server answers, in the order of PS3.18 Chapter 10.
RESOURCES: tuple[Resource, ...] = (
    Resource("studies", (_search("SearchForStudies"), _store("StoreInstances"))),
    Resource("series", (_search("SearchForSeries"),)),
    Resource("instances", (_search("SearchForInstances"),)),
    Resource(
        _STUDY,
        (_retrieve("RetrieveStudy"), _store("StoreInstancesInStudy"), _delete("DeleteStudy")),
    ),
    Resource(_STUDY + "/metadata", (Method("GET", "RetrieveStudyMetadata", _METADATA_TYPES),)),
    Resource(_STUDY + "/rendered", (_rendered("RetrieveRenderedStudy"),)),
    Resource(_STUDY + "/thumbnail", (_thumbnail("RetrieveStudyThumbnail"),)),
    Resource(_STUDY + "/series", (_search("SearchForStudySeries"),)),
    Resource(_STUDY + "/instances", (_search("SearchForStudyInstances"),)),
    Resource(_SERIES, (_retrieve("RetrieveSeries"), _delete("DeleteSeries"))),
    Resource(_SERIES + "/metadata", (Method("GET", "RetrieveSeriesMetadata", _METADATA_TYPES),)),
    Resource(_SERIES + "/rendered", (_rendered("RetrieveRenderedSeries"),)),
    Resource(_SERIES + "/thumbnail", (_thumbnail("RetrieveSeriesThumbnail"),)),
    Resource(_SERIES + "/instances", (_search("SearchForSeriesInstances"),)),
    Resource(_INSTANCE, (_retrieve("RetrieveInstance"), _delete("DeleteInstance"))),
    Resource(
        _INSTANCE + "/metadata", (Method("GET", "RetrieveInstanceMetadata", _METADATA_TYPES),)
    ),
    Resource(_INSTANCE + "/rendered", (_rendered("RetrieveRenderedInstance"),)),
    Resource(_INSTANCE + "/thumbnail", (_thumbnail("RetrieveInstanceThumbnail"),)),
    Resource(
        _INSTANCE + "/frames/{frameList}",
        (Method("GET", "RetrieveFrames", _FRAME_TYPES, ("accept", "transfer-syntax")),),
    ),
    Resource(_INSTANCE + "/frames/{frameList}/rendered", (_rendered("RetrieveRenderedFrames"),)),
    Resource(
        _INSTANCE + "/bulk/{attributePath}",
        (
            Method(
                "GET",
                "RetrieveBulkdata",
                ('multipart/related; type="application/octet-stream"', "application/octet-stream"),
            ),
        ),
    ),
)


def _allow(resources: tuple[Resource, ...]) -> str:
    names = {"OPTIONS"}
    for resource in resources:
        names.update(method.name for method in resource.methods)
    order = ["GET", "POST", "DELETE", "OPTIONS"]
    return ", ".join(name for name in order if name in names)


def _wadl(base: str, resources: tuple[Resource, ...]) -> bytes:
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<application xmlns="{_WADL_NS}">',
        f'  <doc title="dicomweb-server {__version__}">DICOMweb Studies Service (PS3.18 10)</doc>',
        f"  <resources base={quoteattr(base + '/')}>",
    ]
    for resource in resources:
        lines.append(f"    <resource path={quoteattr(resource.path)}>")
        for name in re.findall(r"\{([^}]+)\}", resource.path):
            lines.append(f'      <param name="{name}" style="template" required="true"/>')
        for method in resource.methods:
            lines.append(f'      <method name="{method.name}" id="{method.transaction}">')
            if method.params or method.requests:
                lines.append("        <request>")
                for param in method.params:
                    lines.append(f'          <param name={quoteattr(param)} style="query"/>')
                for media in method.requests:
                    lines.append(f"          <representation mediaType={quoteattr(media)}/>")
                lines.append("        </request>")
            lines.append("        <response>")
            for media in method.responses:
                lines.append(f"          <representation mediaType={quoteattr(media)}/>")
            lines.append("        </response>")
            lines.append("      </method>")
        lines.append("    </resource>")
    lines += ["  </resources>", "</application>", ""]
    return "\n".join(lines).encode()


def _json(base: str, resources: tuple[Resource, ...]) -> bytes:
    return json_bytes(
        {
            "base": base + "/",
            "resources": [
                {
                    "path": resource.path,
                    "methods": [
                        {
                            "method": method.name,
                            "transaction": method.transaction,
                            "queryParameters": list(method.params),
                            "requestMediaTypes": list(method.requests),
                            "responseMediaTypes": list(method.responses),
                        }
                        for method in resource.methods
                    ],
                }
                for resource in resources
            ],
        }
    )


def describe(request: Request, path: str) -> Response:
    """The capabilities of the service (empty `path`) or of the resource at `path`."""
    path = path.strip("/")
    if path:
        resources = tuple(r for r in RESOURCES if r.pattern.match(path))
        if not resources:
            raise NotFound(f"there is no DICOMweb resource at {path[:200]!r}")
    else:
        resources = RESOURCES
    offer, _ = negotiate(accept_ranges(request), [Offer(WADL), Offer("application/json")])
    base = base_url(request, request.app.state.archive.settings)
    body = _wadl(base, resources) if offer.media_type == WADL else _json(base, resources)
    return Response(
        body, media_type=offer.media_type, headers={"Allow": _allow(resources), "Vary": "Accept"}
    )


@router.options("/")
async def service_capabilities(request: Request) -> Response:
    """Retrieve Capabilities of the whole service."""
    return describe(request, "")


@router.options("/{path:path}")
async def resource_capabilities(request: Request, path: str) -> Response:
    """Retrieve Capabilities of one resource."""
    return describe(request, path)
