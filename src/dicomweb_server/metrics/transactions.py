"""Which transaction a request was: the one label every request metric carries.

Keys are the route tables' keys (``auth/permissions.py``, ``audit/middleware.py``): the
method and the route template with the DICOMweb root as ``{root}``. A label is therefore a
template's kind, never a path: no UID, Patient ID or query value can reach a metric, and the
number of series stays fixed whatever the archive holds. A test holds this table against the
application's routes.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Scope

from dicomweb_server.auth.permissions import table_key

_STUDY = "{root}/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"

#: Requests that never reached a route: refused before routing (401 without a valid token,
#: 414 for an over-long query string) or addressed to no route at all (404).
UNROUTED = "unrouted"
#: Routed requests outside the table: FastAPI's API documentation, methods a route lacks (405).
OTHER = "other"

ROUTE_TRANSACTIONS: dict[tuple[str, str], str] = {
    # STOW-RS
    ("POST", "{root}/studies"): "stow",
    ("POST", _STUDY): "stow",
    # QIDO-RS
    ("GET", "{root}/studies"): "qido",
    ("GET", "{root}/series"): "qido",
    ("GET", "{root}/instances"): "qido",
    ("GET", _STUDY + "/series"): "qido",
    ("GET", _STUDY + "/instances"): "qido",
    ("GET", _SERIES + "/instances"): "qido",
    # WADO-RS
    ("GET", _STUDY): "wado-study",
    ("GET", _SERIES): "wado-series",
    ("GET", _INSTANCE): "wado-instance",
    ("GET", _STUDY + "/metadata"): "metadata",
    ("GET", _SERIES + "/metadata"): "metadata",
    ("GET", _INSTANCE + "/metadata"): "metadata",
    ("GET", _INSTANCE + "/bulk/{path:path}"): "bulk",
    ("GET", _INSTANCE + "/frames/{frames}"): "frames",
    ("GET", _STUDY + "/rendered"): "rendered",
    ("GET", _SERIES + "/rendered"): "rendered",
    ("GET", _INSTANCE + "/rendered"): "rendered",
    ("GET", _INSTANCE + "/frames/{frames}/rendered"): "rendered",
    ("GET", _STUDY + "/thumbnail"): "thumbnail",
    ("GET", _SERIES + "/thumbnail"): "thumbnail",
    ("GET", _INSTANCE + "/thumbnail"): "thumbnail",
    # Retrieve Capabilities
    ("OPTIONS", "{root}"): "capabilities",
    ("OPTIONS", "{root}/"): "capabilities",
    ("OPTIONS", "{root}/{path:path}"): "capabilities",
    # DELETE
    ("DELETE", _STUDY): "delete",
    ("DELETE", _SERIES): "delete",
    ("DELETE", _INSTANCE): "delete",
    # Administration and operations
    ("GET", "/admin/audit"): "admin",
    ("GET", "/metrics"): "metrics",
    ("GET", "/healthz"): "probe",
    ("GET", "/readyz"): "probe",
}

#: Every label value the ``transaction`` label can take.
TRANSACTIONS: frozenset[str] = frozenset({*ROUTE_TRANSACTIONS.values(), UNROUTED, OTHER})


class TransactionResolver:
    """Maps a routed request to its transaction, computing each route's answer once.

    Routes define ``__eq__`` and so cannot be dictionary keys; the cache is keyed by the
    route object's ``id`` and keeps the route itself, which lives as long as the app, so an
    ``id`` is never reused while its entry exists.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._cache: dict[tuple[str, int], tuple[Any, str]] = {}

    def __call__(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            return UNROUTED
        method: str = scope["method"]
        if method == "HEAD":
            method = "GET"
        entry = self._cache.get((method, id(route)))
        if entry is not None and entry[0] is route:
            return entry[1]
        path = getattr(route, "path", None)
        kind = OTHER
        if isinstance(path, str):
            key = table_key(method, path, scope["path"], self.root)
            kind = ROUTE_TRANSACTIONS.get(key, OTHER)
        self._cache[(method, id(route))] = (route, kind)
        return kind
