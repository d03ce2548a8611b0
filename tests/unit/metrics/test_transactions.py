"""The transaction table against the application's routes, and the route tables' entries for
``/metrics``."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomweb_server.audit.middleware import NOT_AUDITED, ROUTE_KINDS
from dicomweb_server.auth.permissions import ROUTE_PERMISSIONS, table_key
from dicomweb_server.auth.principal import Permission
from dicomweb_server.metrics.transactions import (
    OTHER,
    ROUTE_TRANSACTIONS,
    TRANSACTIONS,
    UNROUTED,
    TransactionResolver,
)
from dicomweb_server.settings import Settings
from tests.unit.audit.test_app import app_routes

#: FastAPI's documentation routes: counted as "other", deliberately not in the table.
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


@pytest.mark.parametrize("root", ["/dicom-web", ""], ids=["root=/dicom-web", "root=empty"])
def test_every_route_has_a_transaction(root: str, tmp_path: Path) -> None:
    settings = Settings(auth="off", data_dir=tmp_path, url_prefix=root)
    keys = {
        table_key(method, path, path, root)
        for method, path in app_routes(settings)
        if path not in DOCS
    }
    assert keys - set(ROUTE_TRANSACTIONS) == set(), "routes without a transaction"
    phantom = set(ROUTE_TRANSACTIONS) - keys
    if not root:
        phantom.discard(("OPTIONS", "{root}"))  # an empty root has no bare form
    assert phantom == set(), "table entries that are no route"


def test_the_permission_and_audit_tables_know_metrics() -> None:
    assert ROUTE_PERMISSIONS[("GET", "/metrics")] is Permission.MONITOR
    # Scrapes are not audited (no patient data), but refused ones still are (401 / 403).
    assert ("GET", "/metrics") in NOT_AUDITED
    assert ("GET", "/metrics") not in ROUTE_KINDS


@pytest.mark.parametrize("root", ["/dicom-web", ""])
def test_operational_paths_stay_outside_an_empty_root(root: str) -> None:
    for path in ("/metrics", "/healthz", "/readyz", "/admin/audit"):
        assert table_key("GET", path, path, root) == ("GET", path)


def test_label_values_are_fixed_and_carry_no_path() -> None:
    assert {UNROUTED, OTHER, "qido", "stow", "wado-instance", "metrics"} <= TRANSACTIONS
    for value in TRANSACTIONS:
        assert value.replace("-", "").isalpha(), value


class FakeRoute:
    def __init__(self, path: str) -> None:
        self.path = path

    def __eq__(self, other: object) -> bool:  # like Starlette's routes: unhashable
        return isinstance(other, FakeRoute) and other.path == self.path

    __hash__ = None  # type: ignore[assignment]


def test_resolver_uses_the_route_not_the_path() -> None:
    resolve = TransactionResolver("/dicom-web")
    frames = FakeRoute("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
    scope = {"method": "GET", "path": "/dicom-web/studies/1.2/series/3.4/instances/5.6/frames/1"}
    assert resolve({**scope, "route": frames}) == "frames"
    assert resolve({**scope, "route": frames}) == "frames"  # cached
    assert resolve({**scope, "method": "HEAD", "route": frames}) == "frames"
    assert resolve({**scope, "method": "PUT", "route": frames}) == OTHER
    assert resolve(scope) == UNROUTED
    # An equal but distinct route object is resolved on its own, not from the cache.
    assert resolve({**scope, "route": FakeRoute("/studies")}) == "qido"
