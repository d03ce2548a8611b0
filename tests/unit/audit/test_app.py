"""The audit trail inside the application: which routes are audited, the records of refused
requests (401, 403) with real tokens from a test OIDC issuer, and 503 instead of unaudited
answers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from dicomweb_server.app import create_app
from dicomweb_server.audit.middleware import NOT_AUDITED, ROUTE_KINDS, redact_query
from dicomweb_server.audit.store import AuditUnavailable, read_records
from dicomweb_server.audit.trail import AuditTrail
from dicomweb_server.auth.permissions import ROUTE_PERMISSIONS, table_key
from dicomweb_server.index.database import upgrade_schema
from dicomweb_server.settings import Settings
from tests.audit_schema import validate
from tests.dicom_files import make_ct, multipart, stow_content_type
from tests.e2e.idp import TestIdP

ROOT = "/dicom-web"
ANY_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def app_routes(settings: Settings) -> list[tuple[str, str]]:
    """(method, full path) of every route of the application."""
    app = create_app(settings)
    try:  # FastAPI >= 0.16x keeps included routers lazily; this walks them.
        from fastapi.routing import iter_route_contexts

        contexts = [(c.original_route, c.path, c.methods) for c in iter_route_contexts(app.routes)]
    except ImportError:  # older FastAPI: every route is flat in app.routes
        contexts = [(r, getattr(r, "path", None), getattr(r, "methods", None)) for r in app.routes]
    routes = []
    for route, path, methods in contexts:
        assert path is not None, route
        for method in sorted(methods or ()):
            if method != "HEAD":
                routes.append((method, str(path)))
                assert isinstance(route, APIRoute) or path.startswith(("/docs", "/redoc", "/open"))
    return routes


def test_every_route_is_audited_or_deliberately_not(tmp_path: Path) -> None:
    keys = {
        table_key(method, path, path, ROOT)
        for method, path in app_routes(Settings(auth="off", data_dir=tmp_path))
    }
    unclassified = keys - set(ROUTE_KINDS) - NOT_AUDITED
    assert not unclassified, f"routes neither audited nor listed as not audited: {unclassified}"
    assert set(ROUTE_KINDS) <= keys, f"audited routes that do not exist: {set(ROUTE_KINDS) - keys}"
    # Whatever is audited is also permissioned, so a refusal becomes a Security Alert.
    assert set(ROUTE_KINDS) <= set(ROUTE_PERMISSIONS)


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    settings = Settings(data_dir=data_dir, **overrides)
    data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_schema(settings.resolved_database_url)
    return settings


def records(data_dir: Path, **fields: Any) -> list[dict[str, Any]]:
    found = read_records(data_dir / "audit")
    return [r for r in found if all(r.get(name) == value for name, value in fields.items())]


def trail_bytes(data_dir: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted((data_dir / "audit").glob("*.jsonl")))


# --- Refused requests, with authentication on -----------------------------------------------


@pytest.fixture(scope="module")
def idp() -> Iterator[TestIdP]:
    with TestIdP() as provider:
        yield provider


@pytest.fixture
def secured(idp: TestIdP, tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    data_dir = tmp_path / "data"
    settings = settings_for(data_dir, auth="on", oidc_issuer=idp.url, oidc_audience=idp.audience)
    with TestClient(create_app(settings)) as client:
        yield client, data_dir


def test_no_token_is_a_failed_login(secured: tuple[TestClient, Path]) -> None:
    client, data_dir = secured
    response = client.get(f"{ROOT}/studies", params={"PatientID": "P1"})
    assert response.status_code == 401
    [record] = records(data_dir, event="110114")
    assert record["outcome"] == 4
    assert record["user"] == "unauthenticated"
    assert record["status"] == 401
    assert record["client"] == "testclient"
    assert record["query"] == f"{ROOT}/studies?PatientID=P1"
    root = validate(record["xml"])
    assert root.find("EventIdentification/EventTypeCode").get("csd-code") == "110122"  # type: ignore[union-attr]
    assert "no bearer access token" in (root.findtext(".//EventOutcomeDescription") or "")
    # Nothing else: the request never reached a route.
    assert [r["event"] for r in records(data_dir) if r["event"] != "110100"] == ["110114"]


def test_an_expired_token_is_a_failed_login_and_never_recorded(
    idp: TestIdP, secured: tuple[TestClient, Path]
) -> None:
    client, data_dir = secured
    token = idp.expired(sub="mallory")
    response = client.get(f"{ROOT}/studies", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    [record] = records(data_dir, event="110114")
    assert "expired" in record["xml"]
    stored = trail_bytes(data_dir)
    assert token.encode() not in stored
    assert token.split(".")[1].encode() not in stored


def test_a_missing_permission_is_a_security_alert(
    idp: TestIdP, secured: tuple[TestClient, Path]
) -> None:
    client, data_dir = secured
    token = idp.mint(sub="alice", scope="dicomweb.read", jti="token-7")
    response = client.delete(f"{ROOT}/studies/1.2.3", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    [alert] = records(data_dir, event="110113")
    assert (alert["user"], alert["issuer"], alert["jti"]) == ("alice", idp.url, "token-7")
    assert alert["outcome"] == 4 and alert["status"] == 403
    root = validate(alert["xml"])
    assert root.find("EventIdentification/EventTypeCode").get("csd-code") == "110132"  # type: ignore[union-attr]
    assert "'delete' permission" in (root.findtext(".//EventOutcomeDescription") or "")
    performer = root.findall("ActiveParticipant")[1]
    assert performer.get("UserID") == "alice"
    assert performer.get("AlternativeUserID") == f"alice@{idp.url}"
    # The refused DELETE itself produced no deletion record.
    assert records(data_dir, event="110105") == []
    assert token.encode() not in trail_bytes(data_dir)


def test_reading_the_audit_trail_needs_admin_and_is_audited(
    idp: TestIdP, secured: tuple[TestClient, Path]
) -> None:
    client, data_dir = secured
    reader = idp.mint(sub="alice", scope="dicomweb.read")
    admin = idp.mint(sub="root", scope="dicomweb.admin")
    refused = client.get("/admin/audit", headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403
    assert [r["user"] for r in records(data_dir, event="110113")] == ["alice"]
    answer = client.get(
        "/admin/audit",
        params={"user": "alice", "event": "110113"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/x-ndjson"
    [listed] = [line for line in answer.text.splitlines() if line]
    assert '"event":"110113"' in listed
    [used] = records(data_dir, event="110101")
    assert used["user"] == "root"
    root = validate(used["xml"])
    assert root.find(".//ParticipantObjectDetail").get("type") == "Filter"  # type: ignore[union-attr]
    assert used["query"] == "/admin/audit?user=alice&event=110113"


def test_a_permitted_request_names_the_token_user(
    idp: TestIdP, secured: tuple[TestClient, Path]
) -> None:
    client, data_dir = secured
    token = idp.mint(sub="alice", scope="dicomweb.read", jti="jti-1", client_id="viewer")
    response = client.get(
        f"{ROOT}/studies",
        params={"StudyDate": "20240101-"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 204
    [query] = records(data_dir, event="110112")
    assert (query["user"], query["issuer"], query["jti"], query["client_id"]) == (
        "alice",
        idp.url,
        "jti-1",
        "viewer",
    )
    validate(query["xml"])


# --- 503 rather than unaudited answers ------------------------------------------------------


@pytest.fixture
def open_archive(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    data_dir = tmp_path / "data"
    with TestClient(create_app(settings_for(data_dir, auth="off"))) as client:
        yield client, data_dir


def failing_record(*args: object) -> Any:
    raise AuditUnavailable("the audit trail cannot be written ([Errno 28] No space left)")


def test_a_store_whose_records_cannot_be_written_is_answered_503(
    open_archive: tuple[TestClient, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, data_dir = open_archive
    study = "1.2.826.0.1.3680043.8.498.1"
    body = multipart([make_ct(study_uid=study, patient_id="P-503")])
    monkeypatch.setattr(AuditTrail, "record", failing_record)
    with caplog.at_level(logging.ERROR):
        response = client.post(
            f"{ROOT}/studies", content=body, headers={"Content-Type": stow_content_type()}
        )
    assert response.status_code == 503
    assert "audit trail" in response.text
    # The record that could not be stored is in the error log instead.
    assert any("unwritten audit record" in m and "P-503" in m for m in caplog.messages)
    monkeypatch.undo()
    # Once the trail works again, a retry is stored (already present) and audited.
    again = client.post(
        f"{ROOT}/studies", content=body, headers={"Content-Type": stow_content_type()}
    )
    assert again.status_code == 200
    [record] = records(data_dir, event="110104", method="POST")
    assert record["action"] == "R"  # the archive already held it: A.5.3.7 "R"
    assert record["patients"] == ["P-503"]


def test_a_streamed_retrieval_is_answered_503_too(
    open_archive: tuple[TestClient, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = open_archive
    study = "1.2.826.0.1.3680043.8.498.2"
    stored = client.post(
        f"{ROOT}/studies",
        content=multipart([make_ct(study_uid=study)]),
        headers={"Content-Type": stow_content_type()},
    )
    assert stored.status_code == 200
    monkeypatch.setattr(AuditTrail, "record", failing_record)
    response = client.get(f"{ROOT}/studies/{study}", headers={"Accept": ANY_DICOM})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"


def test_while_the_trail_is_failing_requests_are_refused_up_front(
    open_archive: tuple[TestClient, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = open_archive
    trail: AuditTrail = client.app.state.audit  # type: ignore[attr-defined]
    monkeypatch.setattr(type(trail.store), "available", property(lambda self: False))
    assert client.get(f"{ROOT}/studies").status_code == 503
    assert client.get("/healthz").status_code == 200  # probes carry no data


def test_query_string_tokens_never_reach_the_trail(
    idp: TestIdP, secured: tuple[TestClient, Path]
) -> None:
    client, data_dir = secured
    token = idp.mint(sub="alice", scope="dicomweb.read")
    # RFC 6750 2.3 query tokens are refused (401) - and must not be recorded either.
    response = client.get(f"{ROOT}/studies?PatientID=P1&access_token={token}")
    assert response.status_code == 401
    [record] = records(data_dir, event="110114")
    assert record["query"] == f"{ROOT}/studies?PatientID=P1&access_token=[redacted]"
    # Accepted via the header, a token repeated in the query is redacted from the Query too.
    headers = {"Authorization": f"Bearer {token}"}
    client.get(f"{ROOT}/studies?Access%5FToken={token}", headers=headers)
    [query] = records(data_dir, event="110112")
    assert query["query"] == f"{ROOT}/studies?Access%5FToken=[redacted]"
    assert token.encode() not in trail_bytes(data_dir)
    assert token.split(".")[2].encode() not in trail_bytes(data_dir)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", b""),
        (b"PatientID=1&limit=5", b"PatientID=1&limit=5"),
        (b"access_token=abc", b"access_token=[redacted]"),
        (b"a=1&ACCESS_TOKEN=abc&b=%41", b"a=1&ACCESS_TOKEN=[redacted]&b=%41"),
        (b"access%5ftoken=abc", b"access%5ftoken=[redacted]"),
        (b"access_token", b"access_token"),  # no value to hide
        (b"x=access_token", b"x=access_token"),
    ],
)
def test_redact_query(raw: bytes, expected: bytes) -> None:
    assert redact_query(raw) == expected


def test_an_unexpected_error_is_recorded_as_a_serious_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomweb_server.services import retrieve

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    data_dir = tmp_path / "data"
    monkeypatch.setattr(retrieve, "find_instances", broken)
    app = create_app(settings_for(data_dir, auth="off"))
    with TestClient(app, raise_server_exceptions=False) as client:
        study = "1.2.826.0.1.3680043.8.498.3"
        response = client.get(f"{ROOT}/studies/{study}", headers={"Accept": ANY_DICOM})
    assert response.status_code == 500
    [record] = records(data_dir, event="110104")
    assert (record["outcome"], record["status"], record["studies"]) == (8, 500, [study])
    validate(record["xml"])
