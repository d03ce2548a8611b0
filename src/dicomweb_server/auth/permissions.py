"""The permission every route needs, in one table, and its enforcement after routing.

Keys are (method, route path) with the DICOMweb root written ``{root}``, so the table reads
like the conformance statement and does not depend on ``DICOMWEB_URL_PREFIX``. A test holds
the table against the application's real routes: a route missing from it is refused (403)
rather than silently open.
"""

from __future__ import annotations

from typing import NoReturn

import anyio
from sqlalchemy import select
from starlette.requests import Request

from dicomweb_server.auth.principal import SCOPE_KEY, Permission, Principal
from dicomweb_server.errors import Forbidden, NotFound, Unauthorized
from dicomweb_server.index.models import Study
from dicomweb_server.services.archive import Archive

#: Paths anyone may call: liveness and readiness probes carry no data.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})

#: Paths outside the DICOMweb root even when the root is empty (as is ``/admin``).
OUTSIDE_ROOT = frozenset({"/metrics", "/healthz", "/readyz"})

READ, WRITE, DELETE, ADMIN = Permission.READ, Permission.WRITE, Permission.DELETE, Permission.ADMIN

_STUDY = "{root}/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"

ROUTE_PERMISSIONS: dict[tuple[str, str], Permission] = {
    # STOW-RS
    ("POST", "{root}/studies"): WRITE,
    ("POST", _STUDY): WRITE,
    # QIDO-RS
    ("GET", "{root}/studies"): READ,
    ("GET", "{root}/series"): READ,
    ("GET", "{root}/instances"): READ,
    ("GET", _STUDY + "/series"): READ,
    ("GET", _STUDY + "/instances"): READ,
    ("GET", _SERIES + "/instances"): READ,
    # WADO-RS
    ("GET", _STUDY): READ,
    ("GET", _SERIES): READ,
    ("GET", _INSTANCE): READ,
    ("GET", _STUDY + "/metadata"): READ,
    ("GET", _SERIES + "/metadata"): READ,
    ("GET", _INSTANCE + "/metadata"): READ,
    ("GET", _INSTANCE + "/bulk/{path:path}"): READ,
    ("GET", _INSTANCE + "/frames/{frames}"): READ,
    ("GET", _STUDY + "/rendered"): READ,
    ("GET", _SERIES + "/rendered"): READ,
    ("GET", _INSTANCE + "/rendered"): READ,
    ("GET", _INSTANCE + "/frames/{frames}/rendered"): READ,
    ("GET", _STUDY + "/thumbnail"): READ,
    ("GET", _SERIES + "/thumbnail"): READ,
    ("GET", _INSTANCE + "/thumbnail"): READ,
    # Retrieve Capabilities
    ("OPTIONS", "{root}"): READ,
    ("OPTIONS", "{root}/"): READ,
    ("OPTIONS", "{root}/{path:path}"): READ,
    # DELETE
    ("DELETE", _STUDY): DELETE,
    ("DELETE", _SERIES): DELETE,
    ("DELETE", _INSTANCE): DELETE,
    # Administration
    ("GET", "/admin/audit"): ADMIN,
    ("GET", "/metrics"): Permission.MONITOR,
}


def table_key(method: str, route_path: str, request_path: str, root: str) -> tuple[str, str]:
    """The table key of a matched route: its path template with the DICOMweb root as ``{root}``.

    Routers are included under the root, and FastAPI (0.16x) reports an included route's
    path relative to its router; older versions report the full path. Both are handled: a
    request under the root whose template does not start with the root gets it prepended.
    """
    if root and (request_path == root or request_path.startswith(root + "/")):
        if route_path == root or route_path.startswith(root + "/"):
            route_path = route_path[len(root) :]
        return method, "{root}" + route_path
    if not root and not route_path.startswith("/admin") and route_path not in OUTSIDE_ROOT:
        return method, "{root}" + route_path
    return method, route_path


def principal_of(request: Request) -> Principal:
    """The caller the authentication middleware validated."""
    principal: Principal | None = request.scope.get("state", {}).get(SCOPE_KEY)
    if principal is None:
        raise Unauthorized(
            "authentication required", {"WWW-Authenticate": 'Bearer realm="dicomweb"'}
        )
    return principal


def required_permission(request: Request) -> Permission | None:
    """What the matched route needs; ``None`` for a route the table does not know."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return None
    root = request.app.state.settings.url_prefix
    return ROUTE_PERMISSIONS.get(table_key(request.method, path, request.url.path, root))


async def authorize(request: Request) -> None:
    """Global dependency: the caller must hold the route's permission (else 403)."""
    if request.url.path in PUBLIC_PATHS:
        return
    principal = principal_of(request)
    permission = required_permission(request)
    if permission is None or not principal.allows(permission):
        await _refuse(request, principal, permission)
    if principal.patient is None or permission is None or permission is ADMIN:
        return
    await _check_patient_scope(request, principal.patient, permission)


async def _check_patient_scope(request: Request, patient: str, permission: Permission) -> None:
    """A patient-scoped token reaches only that patient's studies; any other study is
    answered exactly as if it were not stored, so no UID of another patient leaks."""
    if permission is WRITE:
        raise Forbidden(
            "a patient-scoped access token cannot store instances",
            {"WWW-Authenticate": 'Bearer realm="dicomweb", error="insufficient_scope"'},
        )
    study = request.path_params.get("study")
    if study is None:
        return  # searches without a study in the path are filtered in the query itself
    archive = request.app.state.archive
    owner = await anyio.to_thread.run_sync(study_patient, archive, study)
    if owner != patient:
        raise NotFound(f"no study {study} is stored")


def study_patient(archive: Archive, study: str) -> str | None:
    """Patient ID of a stored study (``None`` when it is not stored)."""
    with archive.sessions() as session:
        return session.scalar(select(Study.patient_id).where(Study.study_instance_uid == study))


async def _refuse(
    request: Request, principal: Principal, permission: Permission | None
) -> NoReturn:
    needed = permission.value if permission is not None else "a permission nobody holds"
    hook = getattr(request.app.state, "on_forbidden", None)
    if hook is not None:
        await hook(request, principal, permission)
    raise Forbidden(
        f"the access token does not grant the {needed!r} permission this resource needs",
        {
            "WWW-Authenticate": 'Bearer realm="dicomweb", error="insufficient_scope", '
            f'scope="{_scope_value(permission)}"'
        },
    )


def _scope_value(permission: Permission | None) -> str:
    return f"dicomweb.{permission.value}" if permission is not None else "dicomweb.admin"
