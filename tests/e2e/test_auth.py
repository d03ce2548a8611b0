"""Authentication and authorization end to end: a real archive process trusting a real (test)
OIDC provider on loopback, over real HTTP.

* every route refuses every kind of bad token with 401 ``invalid_token`` (and no token with a
  bare ``Bearer`` challenge), and never echoes or logs the token;
* every route answers each role as ``ROUTE_PERMISSIONS`` says (403 ``insufficient_scope``);
* the route table and the application's routes match exactly;
* key rotation, introspection of opaque tokens, patient-scoped tokens, the CLI's startup rules.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from pydicom.uid import generate_uid

from dicomweb_server.app import create_app
from dicomweb_server.auth.permissions import PUBLIC_PATHS, ROUTE_PERMISSIONS, table_key
from dicomweb_server.auth.principal import Permission
from dicomweb_server.settings import Settings
from tests.dicom_files import make_ct, multipart, stow_content_type
from tests.e2e.idp import TestIdP
from tests.e2e.server import ServerProcess, free_port

ROOT = "/dicom-web"
CORS_ORIGIN = "https://viewer.example.org"
THROWAWAY_PATIENT = "PAT-THROWAWAY"
#: The roles archive's key refetch limit (DICOMWEB_OIDC_JWKS_REFETCH_SECONDS).
REFETCH_SECONDS = 8
UID = re.compile(r"\d+(?:\.\d+){3,}")

#: The roles a token can carry (scope values) and the permissions docs/security.md gives them,
#: written out here rather than read from the implementation.
ROLE_SCOPES = {
    "reader": "dicomweb.read",
    "writer": "dicomweb.write",
    "deleter": "dicomweb.delete",
    "monitor": "dicomweb.monitor",
    "admin": "dicomweb.admin",
    "no-role": "openid",
}
ROLE_GRANTS: dict[str, set[Permission]] = {
    "reader": {Permission.READ},
    "writer": {Permission.WRITE},
    "deleter": {Permission.DELETE},
    "monitor": {Permission.MONITOR},
    "admin": set(Permission),
    "no-role": set(),
}

#: Routes FastAPI adds for its API documentation: no authorize dependency (so no
#: permission), but behind the authentication middleware like everything else.
DOCS_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}

#: Table entries whose route is still being written (the audit route of the security issue).
PENDING_ROUTES = {("GET", "/admin/audit")}

#: Every token this worker sent to an archive, for the never-logged check.
SENT_TOKENS: set[str] = set()


def bearer(token: str) -> dict[str, str]:
    SENT_TOKENS.add(token)
    return {"Authorization": f"Bearer {token}"}


def app_routes(settings: Settings) -> list[tuple[str, str, bool]]:
    """(method, full path, is a FastAPI APIRoute) of every route of the application."""
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
                routes.append((method, str(path), isinstance(route, APIRoute)))
    return routes


ROUTED = {
    table_key(method, path, path, ROOT)
    for method, path, api in app_routes(Settings(auth="off"))
    if api and path not in PUBLIC_PATHS
}
TABLE = sorted(ROUTE_PERMISSIONS)


def route_id(key: tuple[str, str]) -> str:
    return f"{key[0]} {key[1]}"


# -- stored data -------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    study: str
    series: str
    sop: str
    patient: str

    @property
    def uids(self) -> set[str]:
        return {self.study, self.series, self.sop}

    def path(self, level: str = "instance") -> str:
        path = f"{ROOT}/studies/{self.study}"
        if level in ("series", "instance"):
            path += f"/series/{self.series}"
        if level == "instance":
            path += f"/instances/{self.sop}"
        return path


def new_instance(patient: str, study: str | None = None, series: str | None = None) -> Instance:
    return Instance(study or generate_uid(), series or generate_uid(), generate_uid(), patient)


def ct_of(instance: Instance, frames: int = 1) -> bytes:
    return make_ct(
        study_uid=instance.study,
        series_uid=instance.series,
        sop_uid=instance.sop,
        patient_id=instance.patient,
        patient_name=f"Test^{instance.patient}",
        rows=16,
        columns=16,
        frames=frames,
    )


def stow_request(
    client: httpx.Client, instances: list[Instance], token: str | None, path: str = "/studies"
) -> httpx.Response:
    headers = {"Content-Type": stow_content_type(), "Accept": "application/dicom+json"}
    if token is not None:
        headers.update(bearer(token))
    return client.post(
        ROOT + path, content=multipart([ct_of(item) for item in instances]), headers=headers
    )


@dataclass
class Archive:
    """The module's archive process, its issuer, stored data and tokens."""

    server: ServerProcess
    idp: TestIdP
    client: httpx.Client
    instances: list[Instance]
    tokens: dict[str, str] = field(default_factory=dict)
    hostile: dict[str, str] = field(default_factory=dict)

    def of(self, patient: str) -> list[Instance]:
        return [item for item in self.instances if item.patient == patient]

    def uids_of(self, patient: str) -> set[str]:
        return set().union(*(item.uids for item in self.of(patient)))

    def get(self, path: str, token: str | None = None, **headers: str) -> httpx.Response:
        if token is not None:
            headers.update(bearer(token))
        return self.client.get(path, headers=headers)


@pytest.fixture(scope="module")
def idp() -> Iterator[TestIdP]:
    with TestIdP() as provider:
        yield provider


@pytest.fixture(scope="module")
def archive(idp: TestIdP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    env = {
        **idp.server_env(),
        "DICOMWEB_PATIENT_CLAIM": "patient_id",
        "DICOMWEB_CORS_ORIGINS": CORS_ORIGIN,
    }
    server = ServerProcess(tmp_path_factory.mktemp("auth") / "data", env)
    server.start()
    a1 = new_instance("PAT-A")
    b1 = new_instance("PAT-B")
    instances = [
        a1,
        new_instance("PAT-A", a1.study, a1.series),
        new_instance("PAT-A"),
        b1,
        new_instance("PAT-B", b1.study, b1.series),
        new_instance("PAT-B"),
    ]
    client = httpx.Client(base_url=server.url, timeout=30)
    try:
        state = Archive(server, idp, client, instances)
        state.tokens = {role: idp.mint(scope=scope) for role, scope in ROLE_SCOPES.items()}
        state.hostile = idp.hostile_tokens(scope="dicomweb.admin")
        stored = stow_request(client, instances, state.tokens["admin"])
        assert stored.status_code == 200, stored.text
        yield state
    finally:
        client.close()
        server.stop()


# -- one request per route ---------------------------------------------------------------


def concrete_path(method: str, template: str, target: Instance) -> str:
    """A URL for a table entry: stored UIDs of ``target`` (fresh ones for DELETE, so an
    allowed delete finds nothing to destroy and answers 404)."""
    if method == "DELETE":
        target = new_instance(target.patient)
    if template == "{root}/studies/{study}" and method == "POST":
        target = new_instance(THROWAWAY_PATIENT)
    path = (
        template.replace("{root}", ROOT)
        .replace("{study}", target.study)
        .replace("{series}", target.series)
        .replace("{instance}", target.sop)
        .replace("{frames}", "1")
    )
    if "{path:path}" in path:
        path = path.replace("{path:path}", "7FE00010" if "/bulk/" in path else "studies")
    return path


def call_route(
    client: httpx.Client, key: tuple[str, str], target: Instance, headers: dict[str, str]
) -> httpx.Response:
    method, template = key
    path = concrete_path(method, template, target)
    if method == "POST":  # STOW: a valid one-instance body for a throwaway patient
        study = path.rsplit("/studies/", 1)[1] if "/studies/" in path else None
        body = ct_of(new_instance(THROWAWAY_PATIENT, study))
        return client.post(
            path,
            content=multipart([body]),
            headers={**headers, "Content-Type": stow_content_type()},
        )
    return client.request(method, path, headers=headers)


def secrets_in(response: httpx.Response, tokens: list[str]) -> list[str]:
    """The tokens that appear in a response's body or headers."""
    text = response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return [token for token in tokens if token and token in text]


# -- matrix 1: authentication ------------------------------------------------------------


@pytest.mark.parametrize("key", TABLE, ids=route_id)
def test_every_route_refuses_missing_and_invalid_tokens(
    archive: Archive, key: tuple[str, str]
) -> None:
    target = archive.of("PAT-A")[0]
    no_token: dict[str, dict[str, str]] = {
        "no Authorization": {},
        # "Bearer " with an empty token: HTTP clients and servers strip the trailing space.
        "Bearer with empty token": {"Authorization": "Bearer"},
        "other scheme": {"Authorization": "Basic ZGljb206ZGljb20="},
    }
    failures = []
    cases = [(name, headers, None) for name, headers in no_token.items()] + [
        (name, bearer(token), token) for name, token in archive.hostile.items()
    ]
    for name, headers, token in cases:
        response = call_route(archive.client, key, target, headers)
        challenge = response.headers.get("www-authenticate", "")
        problems = []
        if response.status_code != 401:
            problems.append(f"status {response.status_code}")
        if not challenge.startswith("Bearer"):
            problems.append(f"WWW-Authenticate {challenge!r}")
        if token is not None and 'error="invalid_token"' not in challenge:
            problems.append(f'no error="invalid_token" in {challenge!r}')
        if token is None and "error=" in challenge:
            problems.append(f"an error code although no token was sent: {challenge!r}")
        if token is not None and secrets_in(response, [token]):
            problems.append("the response echoes the token")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}; body {response.text[:200]!r}")
    assert not failures, "\n".join(failures)


# -- matrix 2: authorization -------------------------------------------------------------


@pytest.mark.parametrize("key", TABLE, ids=route_id)
def test_every_route_answers_each_role_as_the_table_says(
    archive: Archive, key: tuple[str, str]
) -> None:
    if key not in ROUTED:
        assert key in PENDING_ROUTES, f"{route_id(key)} is in the table but not routed"
        pytest.skip(f"{route_id(key)} is not routed yet (pending)")
    needed = ROUTE_PERMISSIONS[key]
    target = archive.of("PAT-A")[0]
    failures = []
    for role, token in archive.tokens.items():
        response = call_route(archive.client, key, target, bearer(token))
        challenge = response.headers.get("www-authenticate", "")
        if needed in ROLE_GRANTS[role]:
            if response.status_code in (401, 403) or response.status_code >= 500:
                failures.append(f"{role} (allowed): {response.status_code} {response.text[:200]}")
        elif response.status_code != 403 or 'error="insufficient_scope"' not in challenge:
            failures.append(
                f"{role} (not allowed): {response.status_code} {challenge!r} {response.text[:200]}"
            )
    assert not failures, "\n".join(failures)


def test_odd_tokens_are_refused_with_401_not_a_server_error(archive: Archive) -> None:
    """Token content reaches the refusal's headers (error_description, Warning) and the
    claim checks: characters a header cannot carry, or numbers a float cannot hold, must
    still end as 401."""
    idp = archive.idp
    rsa = idp.rsa_kid
    odd = {
        "alg with CJK characters": idp.sign_raw({"alg": "日本語", "kid": rsa}, idp.claims()),
        "alg with a latin-1 letter": idp.sign_raw({"alg": "RSé", "kid": rsa}, idp.claims()),
        "kid with CJK characters": idp.sign_raw({"alg": "RS256", "kid": "鍵"}, idp.claims()),
        "exp beyond a float (signed by the issuer)": idp.sign_raw(
            {"alg": "RS256", "kid": rsa}, idp.claims(exp=10**400)
        ),
        "iat below a float (signed by the issuer)": idp.sign_raw(
            {"alg": "RS256", "kid": rsa}, idp.claims(iat=-(10**400))
        ),
    }
    failures = []
    for name, token in odd.items():
        try:  # a connection of its own each: a server error may break the connection
            response = httpx.get(f"{archive.server.root}/studies", headers=bearer(token))
        except httpx.TransportError as exc:
            failures.append(f"{name}: no response ({type(exc).__name__}: {exc})")
            continue
        if response.status_code != 401:
            failures.append(f"{name}: {response.status_code} {response.text[:100]!r}")
    assert not failures, "\n".join(failures)


def test_lowercase_bearer_scheme_is_accepted_and_query_tokens_are_not(archive: Archive) -> None:
    token = archive.tokens["reader"]
    for scheme in ("bearer", "BEARER"):
        response = archive.client.get(
            f"{ROOT}/studies", headers={"Authorization": f"{scheme} {token}"}
        )
        assert response.status_code == 200, (scheme, response.status_code, response.text)
    # RFC 6750 2.3 query tokens end up in logs and histories: not accepted.
    response = archive.client.get(f"{ROOT}/studies", params={"access_token": token})
    assert response.status_code == 401
    assert "error=" not in response.headers["www-authenticate"]


def test_ec_signed_tokens_are_accepted(archive: Archive) -> None:
    token = archive.idp.mint(kid=archive.idp.ec_kid, scope="dicomweb.read")
    response = archive.get(f"{ROOT}/studies", token)
    assert response.status_code == 200, response.text


# -- routes against the table (in process) -----------------------------------------------


@pytest.mark.parametrize("prefix", ["/dicom-web", ""], ids=["root=/dicom-web", "root=empty"])
def test_route_table_matches_the_application_routes(prefix: str) -> None:
    routes = app_routes(Settings(auth="off", url_prefix=prefix))
    api = [(method, path) for method, path, is_api in routes if is_api]
    others = {path for _method, path, is_api in routes if not is_api}

    # Every route needs a permission from the table, but the public probes.
    public = {(method, path) for method, path in api if path in PUBLIC_PATHS}
    assert public == {("GET", path) for path in PUBLIC_PATHS}
    unlisted = [
        (method, path)
        for method, path in api
        if path not in PUBLIC_PATHS
        and table_key(method, path, path, prefix) not in ROUTE_PERMISSIONS
    ]
    assert not unlisted, f"routes missing from ROUTE_PERMISSIONS: {unlisted}"

    # Every table entry is a real route (with a prefix, where the root itself is a route).
    if prefix:
        keys = {table_key(method, path, path, prefix) for method, path in api}
        phantom = set(ROUTE_PERMISSIONS) - keys - PENDING_ROUTES
        assert not phantom, f"ROUTE_PERMISSIONS entries that are no route: {sorted(phantom)}"

    # Routes without the authorize dependency: exactly FastAPI's documentation routes
    # (they need a token, no permission); a new one must be added here knowingly.
    assert others == DOCS_ROUTES
    assert frozenset({"/healthz", "/readyz"}) == PUBLIC_PATHS


def test_public_routes_need_no_token(archive: Archive) -> None:
    for path in sorted(PUBLIC_PATHS):
        response = archive.client.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text)


def test_documentation_routes_need_a_token_but_no_permission(archive: Archive) -> None:
    for path in ("/openapi.json", "/docs", "/redoc"):
        anonymous = archive.get(path)
        assert anonymous.status_code == 401, (path, anonymous.status_code)
        assert archive.get(path, archive.tokens["no-role"]).status_code == 200, path


@pytest.mark.parametrize(
    "path", ["/no-such-path", f"{ROOT}/no-such-resource", "/admin/no-such-thing", "/healthz/"]
)
def test_unknown_paths_answer_401_not_404_without_a_token(archive: Archive, path: str) -> None:
    for method in ("GET", "POST", "DELETE", "OPTIONS"):
        response = archive.client.request(method, path)
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_cors_preflight_needs_no_token_and_refusals_carry_cors_headers(archive: Archive) -> None:
    preflight = archive.client.options(
        f"{ROOT}/studies",
        headers={
            "Origin": CORS_ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    # The preflight answer holds no DICOMweb content (no capabilities document).
    assert "wadl" not in preflight.text.lower()
    refused = archive.client.get(f"{ROOT}/studies", headers={"Origin": CORS_ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == CORS_ORIGIN


def test_cors_exposes_the_bearer_challenge(archive: Archive) -> None:
    """A browser viewer tells an expired token (refresh it) from a missing permission (tell
    the user) by the challenge's error code: WWW-Authenticate is no CORS-safelisted response
    header, so the archive must expose it or scripts cannot read it."""
    for token in (None, archive.hostile["expired"], archive.tokens["reader"]):
        headers = {"Origin": CORS_ORIGIN, **(bearer(token) if token else {})}
        if token == archive.tokens["reader"]:
            response = archive.client.delete(f"{ROOT}/studies/1.2.3", headers=headers)
        else:
            response = archive.client.get(f"{ROOT}/studies", headers=headers)
        assert response.status_code in (401, 403)
        exposed = response.headers.get("access-control-expose-headers", "").lower()
        assert "www-authenticate" in exposed, (response.status_code, exposed)


# -- introspection -----------------------------------------------------------------------


def test_opaque_tokens_are_introspected(archive: Archive) -> None:
    idp = archive.idp
    failures_before = idp.failed_client_auth
    reader = idp.opaque(scope="dicomweb.read")
    response = archive.get(f"{ROOT}/studies", reader)
    assert response.status_code == 200, response.text
    assert idp.failed_client_auth == failures_before  # the archive authenticated as client
    assert idp.introspections >= 1
    # The opaque token's scope is honoured: read only.
    assert (
        stow_request(archive.client, [new_instance(THROWAWAY_PATIENT)], reader).status_code == 403
    )

    unknown = "opaque-" + os.urandom(16).hex()
    revoked = idp.opaque(scope="dicomweb.read")
    idp.revoke(revoked)
    for token in (unknown, revoked):
        response = archive.get(f"{ROOT}/studies", token)
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert not secrets_in(response, [token])


def test_an_introspected_token_is_not_accepted_after_it_expires(archive: Archive) -> None:
    token = archive.idp.opaque(scope="dicomweb.read", exp=int(time.time()) + 2)
    assert archive.get(f"{ROOT}/studies", token).status_code == 200
    time.sleep(3.1)
    response = archive.get(f"{ROOT}/studies", token)
    assert response.status_code == 401, "a cached introspection outlived the token's exp"


# -- patient-scoped tokens ---------------------------------------------------------------


def foreign_uids(response: httpx.Response, uids: set[str], request_path: str) -> set[str]:
    """UIDs of ``uids`` in the response that the request did not name itself."""
    named = set(UID.findall(request_path))
    return {uid for uid in uids - named if uid in response.text}


RETRIEVE_LEVELS: list[tuple[str, str, dict[str, str]]] = [
    ("study", "", {"Accept": 'multipart/related; type="application/dicom"'}),
    ("series", "", {"Accept": 'multipart/related; type="application/dicom"'}),
    ("instance", "", {"Accept": 'multipart/related; type="application/dicom"'}),
    ("study", "/metadata", {"Accept": "application/dicom+json"}),
    ("series", "/metadata", {"Accept": "application/dicom+json"}),
    ("instance", "/metadata", {"Accept": "application/dicom+json"}),
    ("instance", "/frames/1", {"Accept": 'multipart/related; type="application/octet-stream"'}),
    ("instance", "/bulk/7FE00010", {}),
    ("study", "/rendered", {"Accept": "image/png"}),
    ("series", "/rendered", {"Accept": "image/png"}),
    ("instance", "/rendered", {"Accept": "image/png"}),
    ("instance", "/frames/1/rendered", {"Accept": "image/png"}),
    ("study", "/thumbnail", {"Accept": "image/png"}),
    ("series", "/thumbnail", {"Accept": "image/png"}),
    ("instance", "/thumbnail", {"Accept": "image/png"}),
    ("study", "/series", {}),
    ("study", "/instances", {}),
    ("series", "/instances", {}),
]


def test_patient_scoped_search_sees_only_that_patient(archive: Archive) -> None:
    idp = archive.idp
    tokens = {
        "jwt": idp.mint(scope="dicomweb.read", patient_id="PAT-A"),
        "opaque": idp.opaque(scope="dicomweb.read", patient_id="PAT-A"),
    }
    b_uids = archive.uids_of("PAT-B")
    b_study = archive.of("PAT-B")[0]
    queries = [
        "/studies",
        "/series",
        "/instances",
        "/studies?PatientID=PAT-B",
        "/studies?PatientID=*",
        f"/studies?StudyInstanceUID={b_study.study}",
        f"/series?StudyInstanceUID={b_study.study}",
        f"/instances?SeriesInstanceUID={b_study.series}",
        "/instances?includefield=all&limit=1000",
    ]
    for kind, token in tokens.items():
        for query in queries:
            response = archive.get(ROOT + query, token)
            assert response.status_code in (200, 204), (kind, query, response.text)
            assert not (b_uids & set(UID.findall(response.text))), (kind, query)
            assert "PAT-B" not in response.text, (kind, query)
        listed = archive.get(f"{ROOT}/instances", token).text
        assert archive.uids_of("PAT-A") <= set(UID.findall(listed)), kind


def test_patient_scoped_reads_of_other_patients_look_like_missing_studies(
    archive: Archive,
) -> None:
    token = archive.idp.mint(scope="dicomweb.read", patient_id="PAT-A")
    admin = archive.idp.mint(scope="dicomweb.admin", patient_id="PAT-A")
    own, other = archive.of("PAT-A")[0], archive.of("PAT-B")[0]
    missing = new_instance("PAT-B")
    mixed = Instance(own.study, other.series, other.sop, "PAT-B")
    b_uids = archive.uids_of("PAT-B")
    failures = []
    for level, suffix, headers in RETRIEVE_LEVELS:
        mine = archive.get(own.path(level) + suffix, token, **headers)
        if mine.status_code != 200:
            failures.append(f"own {level}{suffix}: {mine.status_code} {mine.text[:120]}")
        answers = {}
        for name, target, who in (
            ("other", other, token),
            ("missing", missing, token),
            ("other as scoped admin", other, admin),
        ):
            path = target.path(level) + suffix
            response = archive.get(path, who, **headers)
            answers[name] = response
            if response.status_code != 404:
                failures.append(f"{name} {level}{suffix}: {response.status_code}")
            leaked = foreign_uids(response, b_uids, path)
            if leaked or "PAT-B" in response.text:
                failures.append(f"{name} {level}{suffix} leaks {leaked or 'PAT-B'}")
        # Same answer as for a study that does not exist, but for the UIDs the client sent.
        other_text = answers["other"].text
        for uid, placeholder in zip(
            (other.study, other.series, other.sop), ("S", "R", "I"), strict=True
        ):
            other_text = other_text.replace(uid, placeholder)
        missing_text = answers["missing"].text
        for uid, placeholder in zip(
            (missing.study, missing.series, missing.sop), ("S", "R", "I"), strict=True
        ):
            missing_text = missing_text.replace(uid, placeholder)
        if other_text != missing_text:
            failures.append(f"{level}{suffix}: {other_text!r} != {missing_text!r}")
        if level != "study":
            # Own study, other patient's series: nothing of it either (a search finds nothing).
            path = mixed.path(level) + suffix
            response = archive.get(path, token, **headers)
            expected = (204,) if suffix == "/instances" else (404,)
            if response.status_code not in expected or foreign_uids(response, b_uids, path):
                failures.append(f"own study + other series {level}{suffix}: {response.status_code}")
    assert not failures, "\n".join(failures)


def test_patient_scoped_tokens_cannot_store_or_delete_other_patients(archive: Archive) -> None:
    idp = archive.idp
    own = archive.of("PAT-A")[0]
    for scope in ("dicomweb.write", "dicomweb.admin"):
        token = idp.mint(scope=scope, patient_id="PAT-A")
        for path in ("/studies", f"/studies/{own.study}"):
            instance = new_instance("PAT-A", own.study if path != "/studies" else None)
            response = stow_request(archive.client, [instance], token, path)
            assert response.status_code == 403, (scope, path, response.status_code)
            assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    # A patient-scoped deleter cannot delete another patient's study: it "is not there".
    victim = new_instance("PAT-B")
    assert stow_request(archive.client, [victim], archive.tokens["admin"]).status_code == 200
    deleter = idp.mint(scope="dicomweb.delete dicomweb.read", patient_id="PAT-A")
    for level in ("study", "series", "instance"):
        response = archive.client.delete(victim.path(level), headers=bearer(deleter))
        assert response.status_code == 404, (level, response.status_code)
    kept = archive.get(victim.path("instance") + "/metadata", archive.tokens["admin"])
    assert kept.status_code == 200, "a patient-scoped token deleted another patient's data"


# -- a second archive: roles from another claim, no CORS; key rotation -------------------


@dataclass
class RolesArchive:
    server: ServerProcess
    idp: TestIdP
    client: httpx.Client

    def get(self, path: str, token: str | None = None, **headers: str) -> httpx.Response:
        if token is not None:
            headers.update(bearer(token))
        return self.client.get(path, headers=headers)

    def reader_token(self, **claims: Any) -> str:
        return self.idp.mint(realm_access={"roles": ["dicom-reader"]}, **claims)


@pytest.fixture(scope="module")
def roles_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolesArchive]:
    with TestIdP() as idp:
        env = {
            **idp.server_env(),
            # Keys straight from a JWKS URL (no discovery), roles from a Keycloak-style claim.
            "DICOMWEB_OIDC_JWKS_URL": idp.jwks_url,
            "DICOMWEB_ROLES_CLAIM": "realm_access.roles",
            "DICOMWEB_ROLE_NAMES": "dicom-reader=reader,dicom-admin=admin",
            # A shorter key refetch limit than the default 30 s, so the rotation test waits less.
            "DICOMWEB_OIDC_JWKS_REFETCH_SECONDS": str(REFETCH_SECONDS),
        }
        server = ServerProcess(tmp_path_factory.mktemp("auth-roles") / "data", env)
        server.start()
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                state = RolesArchive(server, idp, client)
                # The first token makes the archive fetch the keys (the rotation test's start).
                first = state.get(f"{ROOT}/studies", state.reader_token())
                assert first.status_code in (200, 204), first.text
                yield state
        finally:
            server.stop()


@pytest.fixture(scope="module", autouse=True)
def _start_the_rotation_clock(roles_archive: RolesArchive) -> None:
    """The second archive starts with the first test a worker runs here: its first key
    fetch starts the refetch limit the rotation test (the module's last) must let pass, so that wait
    overlaps the other tests instead of adding to them."""


def test_roles_from_a_configured_claim(roles_archive: RolesArchive) -> None:
    archive = roles_archive
    reader = archive.reader_token(scope="openid")
    assert archive.get(f"{ROOT}/studies", reader).status_code in (200, 204)
    stored = stow_request(archive.client, [new_instance(THROWAWAY_PATIENT)], reader)
    assert stored.status_code == 403
    assert 'error="insufficient_scope"' in stored.headers["www-authenticate"]
    admin = archive.idp.mint(realm_access={"roles": ["dicom-admin"]}, scope="openid")
    stored = stow_request(archive.client, [new_instance(THROWAWAY_PATIENT)], admin)
    assert stored.status_code == 200, stored.text
    # With roles from realm_access.roles, scope values grant nothing any more; neither do
    # role values the mapping does not name, nor the role names themselves.
    for claims in (
        {"scope": "dicomweb.admin dicomweb.read"},
        {"realm_access": {"roles": ["dicomweb.read", "reader", "admin"]}},
        {"realm_access": "dicom-reader"},
        {"roles": ["dicom-reader"]},
    ):
        token = archive.idp.mint(**claims)
        response = archive.get(f"{ROOT}/studies", token)
        assert response.status_code == 403, (claims, response.status_code)


def test_forged_preflight_on_an_archive_without_cors_gets_no_content(
    roles_archive: RolesArchive,
) -> None:
    """Without CORS configured nothing answers preflights, so a request dressed as one must
    be treated like any other unauthenticated request."""
    preflight = {"Origin": "https://evil.example.org", "Access-Control-Request-Method": "GET"}
    capabilities = roles_archive.client.options(f"{ROOT}/studies", headers=preflight)
    assert capabilities.status_code == 401, capabilities.text[:200]
    assert "wadl" not in capabilities.text.lower()


def test_forged_preflight_does_not_reveal_which_paths_exist(roles_archive: RolesArchive) -> None:
    preflight = {"Origin": "https://evil.example.org", "Access-Control-Request-Method": "GET"}
    answers = {
        path: roles_archive.client.options(path, headers=preflight).status_code
        for path in ("/no-such-path", "/docs", "/admin/audit", f"{ROOT}/studies")
    }
    assert set(answers.values()) == {401}, answers


# -- CLI startup rules -------------------------------------------------------------------


def serve(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``serve`` that must refuse to start: its result (fails the test if it starts)."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("DICOMWEB_")}
    command = [sys.executable, "-m", "dicomweb_server.cli", "serve", "--port", str(free_port())]
    command += ["--data-dir", str(tmp_path / "data"), *args]
    try:
        return subprocess.run(
            command, env={**clean, **env}, capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(args)} with {env} started instead of refusing")


def test_serve_refuses_auth_on_without_an_issuer(tmp_path: Path) -> None:
    result = serve(tmp_path, {"DICOMWEB_AUTH": "on"})
    assert result.returncode == 2, result.stderr
    assert "DICOMWEB_OIDC_ISSUER" in result.stderr
    default = serve(tmp_path, {})  # authentication is on by default
    assert default.returncode == 2, default.stderr
    assert "DICOMWEB_OIDC_ISSUER" in default.stderr


def test_serve_refuses_auth_off_on_a_public_address(tmp_path: Path) -> None:
    for env, args in (
        ({}, ["--no-auth", "--host", "0.0.0.0"]),
        ({"DICOMWEB_AUTH": "off"}, ["--host", "0.0.0.0"]),
    ):
        result = serve(tmp_path, env, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "loopback" in result.stderr


def test_serve_no_auth_on_loopback_starts(tmp_path: Path) -> None:
    # --no-auth wins over DICOMWEB_AUTH=on (with no issuer configured, on could not start).
    server = ServerProcess(tmp_path / "data", {"DICOMWEB_AUTH": "on"}, ["--no-auth"])
    server.start()
    try:
        response = httpx.get(f"{server.root}/studies", timeout=10)
        assert response.status_code == 204, response.text
    finally:
        server.stop()


# -- nothing secret in the log -----------------------------------------------------------


def test_tokens_are_never_logged(archive: Archive) -> None:
    idp = archive.idp
    revoked = idp.opaque(scope="dicomweb.read")
    idp.revoke(revoked)
    extra = [
        *idp.hostile_tokens(scope="dicomweb.admin").values(),
        "opaque-" + os.urandom(16).hex(),
        revoked,
    ]
    for token in extra:
        for path in (f"{ROOT}/studies", f"{ROOT}/studies/1.2.3/metadata", "/no-such-path"):
            assert archive.get(path, token).status_code == 401
    time.sleep(0.3)  # let the server flush its log
    log = archive.server.log()
    assert log, "the server wrote no log at all"
    leaked = [token[:24] for token in SENT_TOKENS if len(token) >= 8 and token in log]
    assert not leaked, f"tokens in the server log: {leaked}"
    # Nor large pieces of them: a JWT's signature is unique to the token.
    signatures = [t.rsplit(".", 1)[1] for t in SENT_TOKENS if t.count(".") == 2]
    assert not [s for s in signatures if len(s) >= 16 and s in log]
    # Nor anything the archive keeps on disk (index, audit trail, blobs).
    for stored in sorted(archive.server.data_dir.rglob("*")):
        if stored.is_file():
            data = stored.read_bytes()
            found = [t[:24] for t in SENT_TOKENS if len(t) >= 16 and t.encode() in data]
            assert not found, f"tokens in {stored}: {found}"


# -- key rotation (last: it waits out the archive's key refetch limit) ------------------


def test_key_rotation_is_picked_up_and_unknown_kids_are_rate_limited(
    roles_archive: RolesArchive,
) -> None:
    archive = roles_archive
    idp = archive.idp
    old_kid = idp.signing_kid
    idp.rotate(drop_old=True)
    rotated = archive.reader_token()
    last = idp.last_jwks_fetch
    assert last is not None, "the archive never fetched the issuer's keys"
    fetches = idp.jwks_fetches
    if time.time() - last < REFETCH_SECONDS - 3:
        # Within the limit of the last fetch an unknown kid does not make the archive fetch again,
        # however many requests carry one: the new key is not known yet.
        for _ in range(5):
            assert archive.get(f"{ROOT}/studies", idp.unknown_kid()).status_code == 401
        assert archive.get(f"{ROOT}/studies", rotated).status_code == 401
        assert idp.jwks_fetches == fetches
    time.sleep(max(0.0, last + REFETCH_SECONDS + 1 - time.time()))
    response = archive.get(f"{ROOT}/studies", rotated)
    assert response.status_code in (200, 204), response.text
    assert idp.jwks_fetches == fetches + 1
    # Right after a fetch, kids that do not exist are refused without fetching again.
    for _ in range(10):
        response = archive.get(f"{ROOT}/studies", idp.unknown_kid())
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert idp.jwks_fetches == fetches + 1
    # The dropped key's tokens are refused (a fresh one: not in the validated-token cache).
    dropped = archive.get(
        f"{ROOT}/studies", idp.mint(kid=old_kid, realm_access={"roles": ["dicom-reader"]})
    )
    assert dropped.status_code == 401
