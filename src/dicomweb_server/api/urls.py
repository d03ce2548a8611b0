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


def base_url(request: Request, settings: Settings) -> str:
    """The absolute URL of the DICOMweb root for this request, without a trailing slash."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    headers = request.headers
    scheme = request.url.scheme
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
