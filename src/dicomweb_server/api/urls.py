"""The absolute DICOMweb root URL as the client sees it.

RetrieveURL and BulkDataURI values must be absolute (PS3.18 F.2.6, 10.5.3) and must still
work when the archive sits behind a reverse proxy, so the root comes from, in order: the
configured public base URL, RFC 7239 ``Forwarded``, ``X-Forwarded-Proto/Host/Prefix``, and
finally the request's own scheme, Host and server port.
"""

from __future__ import annotations

from starlette.requests import Request

from dicomweb_server.index.lookup import InstanceRef
from dicomweb_server.settings import Settings

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _forwarded(value: str) -> dict[str, str]:
    first = value.split(",", 1)[0]
    result: dict[str, str] = {}
    for pair in first.split(";"):
        name, _, item = pair.partition("=")
        result[name.strip().lower()] = item.strip().strip('"')
    return result


#: Where a request's DICOMweb root is kept once worked out: a handler and the audit trail
#: both need it, and the headers it comes from do not change within a request.
_SCOPE_KEY = "dicomweb.base_url"


def base_url(request: Request, settings: Settings) -> str:
    """The absolute URL of the DICOMweb root for this request, without a trailing slash."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    state = request.scope.setdefault("state", {})
    found: str | None = state.get(_SCOPE_KEY)
    if found is None:
        found = state[_SCOPE_KEY] = _request_root(request, settings)
    return found


#: The request headers the root is worked out from (ASGI servers pass names in lower case).
_ROOT_HEADERS = frozenset(
    {b"host", b"forwarded", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-prefix"}
)


def _root_headers(request: Request) -> dict[str, str]:
    """The first value of each header in `_ROOT_HEADERS`, read in one pass over the raw
    headers: looking each name up through ``request.headers`` scans them once per name."""
    found: dict[str, str] = {}
    for name, value in request.scope.get("headers", ()):
        if name in _ROOT_HEADERS:
            found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return found


def _request_root(request: Request, settings: Settings) -> str:
    headers = _root_headers(request)
    # The scheme from the scope as the server (or its trusted proxy) set it: building
    # ``request.url`` for it would assemble the whole URL, query string included.
    scheme = str(request.scope.get("scheme") or "http")
    host = headers.get("host", "")
    prefix = ""
    proxied = False
    if settings.trust_forwarded_headers:
        forwarded = headers.get("forwarded")
        if forwarded:
            fields = _forwarded(forwarded)
            proxied = "host" in fields
            scheme = fields.get("proto", scheme)
            host = fields.get("host", host)
        elif "x-forwarded-host" in headers:
            proxied = True
            host = headers["x-forwarded-host"].split(",")[0].strip()
        scheme = headers.get("x-forwarded-proto", scheme).split(",")[0].strip() or scheme
        prefix = headers.get("x-forwarded-prefix", "").strip().rstrip("/")
    server = request.scope.get("server")
    if not host:
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    elif (
        not proxied
        and server
        and ":" not in host.rsplit("]", 1)[-1]
        and server[1]
        and server[1] != _DEFAULT_PORTS.get(scheme)
    ):
        # Some clients send Host without the port: use the port the request came in on.
        host = f"{host}:{server[1]}"
    return f"{scheme}://{host}{prefix}{settings.url_prefix}"


def instance_url(root: str, ref: InstanceRef) -> str:
    """The absolute WADO-RS URL of a stored instance under the DICOMweb root `root`."""
    return (
        f"{root}/studies/{ref.study_instance_uid}/series/{ref.series_instance_uid}"
        f"/instances/{ref.sop_instance_uid}"
    )
