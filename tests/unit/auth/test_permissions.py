"""The route table's keys and what each role may do."""

from __future__ import annotations

import pytest

from dicomweb_server.auth.permissions import PUBLIC_PATHS, ROUTE_PERMISSIONS, table_key
from dicomweb_server.auth.principal import ANONYMOUS, Permission, Principal, Role

READ, WRITE, DELETE, ADMIN = Permission.READ, Permission.WRITE, Permission.DELETE, Permission.ADMIN
MONITOR = Permission.MONITOR

#: docs/security.md, written out independently of ROLE_PERMISSIONS.
GRANTS = {
    Role.READER: {READ},
    Role.WRITER: {WRITE},
    Role.DELETER: {DELETE},
    Role.MONITOR: {MONITOR},
    Role.ADMIN: {READ, WRITE, DELETE, MONITOR, ADMIN},
}


@pytest.mark.parametrize(
    ("method", "route_path", "request_path", "key"),
    [
        # Route templates as FastAPI >= 0.16x reports them: relative to the router.
        ("GET", "/studies", "/dicom-web/studies", ("GET", "{root}/studies")),
        (
            "GET",
            "/studies/{study}/series/{series}",
            "/dicom-web/studies/1.2/series/3.4",
            ("GET", "{root}/studies/{study}/series/{series}"),
        ),
        ("OPTIONS", "/", "/dicom-web/", ("OPTIONS", "{root}/")),
        ("OPTIONS", "/{path:path}", "/dicom-web/studies", ("OPTIONS", "{root}/{path:path}")),
        # Full templates, as older FastAPI and routes added on the app report them.
        ("GET", "/dicom-web/studies", "/dicom-web/studies", ("GET", "{root}/studies")),
        (
            "DELETE",
            "/dicom-web/studies/{study}",
            "/dicom-web/studies/1.2",
            ("DELETE", "{root}/studies/{study}"),
        ),
        ("OPTIONS", "/dicom-web", "/dicom-web", ("OPTIONS", "{root}")),
        ("OPTIONS", "/dicom-web/", "/dicom-web/", ("OPTIONS", "{root}/")),
        # Outside the root.
        ("GET", "/admin/audit", "/admin/audit", ("GET", "/admin/audit")),
        ("GET", "/healthz", "/healthz", ("GET", "/healthz")),
        ("GET", "/openapi.json", "/openapi.json", ("GET", "/openapi.json")),
        # A sibling path that merely starts with the root's name is not under it.
        ("GET", "/dicom-webx/studies", "/dicom-webx/studies", ("GET", "/dicom-webx/studies")),
    ],
)
def test_table_key_under_a_root(
    method: str, route_path: str, request_path: str, key: tuple[str, str]
) -> None:
    assert table_key(method, route_path, request_path, "/dicom-web") == key


@pytest.mark.parametrize(
    ("method", "route_path", "key"),
    [
        ("GET", "/studies", ("GET", "{root}/studies")),
        ("POST", "/studies/{study}", ("POST", "{root}/studies/{study}")),
        ("OPTIONS", "/", ("OPTIONS", "{root}/")),
        ("OPTIONS", "/{path:path}", ("OPTIONS", "{root}/{path:path}")),
        ("GET", "/admin/audit", ("GET", "/admin/audit")),
    ],
)
def test_table_key_with_an_empty_root(method: str, route_path: str, key: tuple[str, str]) -> None:
    request_path = route_path.replace("{study}", "1.2").replace("{path:path}", "studies")
    assert table_key(method, route_path, request_path, "") == key


@pytest.mark.parametrize("root", ["/dicom-web", "/a/b", ""])
def test_every_table_entry_round_trips(root: str) -> None:
    for method, template in ROUTE_PERMISSIONS:
        if not template.startswith("{root}"):
            assert table_key(method, template, template, root) == (method, template)
            continue
        if root == "" and template == "{root}":
            continue  # no route for an empty root's bare form
        full = template.replace("{root}", root)
        request = full.replace("{path:path}", "x").replace("{", "").replace("}", "")
        assert table_key(method, full, request, root) == (method, template), full
        relative = template.replace("{root}", "")
        if relative:
            assert table_key(method, relative, request, root) == (method, template), relative


def test_the_table_knows_every_permission_and_no_public_path() -> None:
    assert set(ROUTE_PERMISSIONS.values()) == set(Permission)
    assert not {path for _method, path in ROUTE_PERMISSIONS} & PUBLIC_PATHS
    writes = {key for key, permission in ROUTE_PERMISSIONS.items() if permission is WRITE}
    assert {method for method, _path in writes} == {"POST"}
    deletes = {key for key, permission in ROUTE_PERMISSIONS.items() if permission is DELETE}
    assert {method for method, _path in deletes} == {"DELETE"}
    reads = {key for key, permission in ROUTE_PERMISSIONS.items() if permission is READ}
    assert {method for method, _path in reads} == {"GET", "OPTIONS"}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("permission", list(Permission))
def test_each_role_allows_its_permissions(role: Role, permission: Permission) -> None:
    principal = Principal(subject="someone", roles=frozenset({role}))
    assert principal.allows(permission) is (permission in GRANTS[role])
    assert principal.permissions == frozenset(GRANTS[role])


def test_roles_add_up_and_no_role_allows_nothing() -> None:
    both = Principal(subject="s", roles=frozenset({Role.READER, Role.DELETER}))
    assert both.permissions == frozenset({READ, DELETE})
    assert not both.allows(WRITE)
    nobody = Principal(subject="s")
    assert nobody.permissions == frozenset()
    assert not [permission for permission in Permission if nobody.allows(permission)]
    # A patient restriction does not change what a role allows (it narrows what it reaches).
    scoped = Principal(subject="s", roles=frozenset({Role.READER}), patient="PAT-A")
    assert scoped.allows(READ) and not scoped.allows(WRITE)


def test_anonymous_is_all_powerful_and_marked() -> None:
    assert ANONYMOUS.anonymous is True
    assert ANONYMOUS.patient is None
    assert all(ANONYMOUS.allows(permission) for permission in Permission)
