"""TokenValidator: keys from a JWKS file or over (mocked) HTTP, every claim check, algorithm
allow-list, roles and patient claims, key refetch, introspection and its cache."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import ValidationError

from dicomweb_server.auth import tokens
from dicomweb_server.auth.principal import Role
from dicomweb_server.auth.tokens import AuthConfigurationError, InvalidToken, TokenValidator
from dicomweb_server.settings import Settings
from tests.e2e.idp import MALFORMED_TOKENS, OMIT, TestIdP, b64url

NOW = 1_800_000_000.0
LEEWAY = 30


class Clock:
    """Stands in for the ``time`` module inside ``tokens``: wall and monotonic time move
    together, and only when a test says so."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - NOW + 10_000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MockIssuer:
    """The IdP's endpoints behind an httpx MockTransport, counting requests."""

    def __init__(self, idp: TestIdP) -> None:
        self.idp = idp
        self.requests: list[httpx.Request] = []
        self.jwks_status = 200
        self.discovery: dict[str, Any] = {
            "issuer": idp.url,
            "jwks_uri": f"{idp.url}/jwks",
            "introspection_endpoint": f"{idp.url}/introspect",
        }
        self.introspection: dict[str, dict[str, Any]] = {}
        self.introspection_status = 200

    def count(self, path: str) -> int:
        return sum(1 for request in self.requests if request.url.path == path)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/.well-known/openid-configuration":
            return httpx.Response(200, json=self.discovery)
        if path == "/jwks":
            return httpx.Response(self.jwks_status, json=self.idp.jwks())
        if path == "/introspect" and request.method == "POST":
            if self.introspection_status != 200:
                return httpx.Response(self.introspection_status, text="unavailable")
            token = parse_qs(request.content.decode())["token"][0]
            return httpx.Response(200, json=self.introspection.get(token, {"active": False}))
        return httpx.Response(404)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))


@pytest.fixture(scope="module")
def idp() -> Iterator[TestIdP]:
    provider = TestIdP()  # not started: its keys and tokens only, HTTP is mocked
    yield provider
    provider.stop()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(tokens, "time", fake)
    return fake


@pytest.fixture
def jwks_file(idp: TestIdP, tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp.jwks()))
    return path


def settings(**values: Any) -> Settings:
    return Settings(auth="on", oidc_leeway_seconds=LEEWAY, **values)


@pytest.fixture
def validator(idp: TestIdP, jwks_file: Path) -> Iterator[TokenValidator]:
    checker = TokenValidator(
        settings(oidc_issuer=idp.url, oidc_audience="dicomweb", oidc_jwks_file=jwks_file)
    )
    yield checker
    checker.close()


def timed(idp: TestIdP, now: float = NOW, **claims: Any) -> str:
    """A token whose times are relative to the fake clock."""
    times = {"iat": int(now), "nbf": int(now), "exp": int(now) + 300}
    return idp.mint(**{**times, **claims})


# -- the happy path ----------------------------------------------------------------------


def test_a_valid_token_gives_its_principal(
    idp: TestIdP, validator: TokenValidator, clock: Clock
) -> None:
    token = timed(idp, sub="alice", jti="token-1", client_id="ohif", scope="dicomweb.read")
    principal = validator.validate(token)
    assert principal.subject == "alice"
    assert principal.issuer == idp.url
    assert principal.token_id == "token-1"
    assert principal.client_id == "ohif"
    assert principal.roles == frozenset({Role.READER})
    assert principal.patient is None
    assert principal.anonymous is False
    assert principal.expires_at == int(NOW) + 300


def test_client_id_falls_back_to_azp_and_ids_are_bounded(
    idp: TestIdP, validator: TokenValidator, clock: Clock
) -> None:
    principal = validator.validate(timed(idp, client_id=OMIT, azp="viewer", jti="j" * 500))
    assert principal.client_id == "viewer"
    assert principal.token_id == "j" * 200
    bare = validator.validate(timed(idp, client_id=OMIT, jti=OMIT))
    assert bare.client_id is None
    assert bare.token_id is None


def test_ec_signed_tokens_are_accepted(
    idp: TestIdP, validator: TokenValidator, clock: Clock
) -> None:
    assert validator.validate(timed(idp, kid=idp.ec_kid, sub="ec")).subject == "ec"


def test_audience_may_be_a_list(idp: TestIdP, validator: TokenValidator, clock: Clock) -> None:
    assert validator.validate(timed(idp, aud=["other", "dicomweb"])).subject


def test_nbf_and_iat_are_optional(idp: TestIdP, validator: TokenValidator, clock: Clock) -> None:
    assert validator.validate(timed(idp, nbf=OMIT, iat=OMIT)).subject


def test_without_a_configured_issuer_or_audience_they_are_not_checked(
    idp: TestIdP, jwks_file: Path, clock: Clock
) -> None:
    checker = TokenValidator(settings(oidc_jwks_file=jwks_file))
    principal = checker.validate(timed(idp, iss="https://elsewhere", aud="anything"))
    assert principal.issuer == "https://elsewhere"


# -- claim checks ------------------------------------------------------------------------

REFUSED_CLAIMS: dict[str, dict[str, Any]] = {
    "wrong iss": {"iss": "https://evil.example.org"},
    "iss with trailing slash": {"iss": "__ISSUER__/"},
    "no iss": {"iss": OMIT},
    "wrong aud": {"aud": "other-api"},
    "aud list without us": {"aud": ["a", "b"]},
    "no aud": {"aud": OMIT},
    "aud object": {"aud": {"dicomweb": True}},
    "no exp": {"exp": OMIT},
    "exp as string": {"exp": str(int(NOW) + 300)},
    "exp as bool": {"exp": True},
    "exp null": {"exp": None},
    "expired": {"exp": int(NOW) - 120},
    "nbf in the future": {"nbf": int(NOW) + 120},
    "nbf as string": {"nbf": str(int(NOW))},
    "iat in the future": {"iat": int(NOW) + 120},
    "iat as string": {"iat": "yesterday"},
    "no sub": {"sub": OMIT},
    "empty sub": {"sub": ""},
    "sub as number": {"sub": 42},
}


@pytest.mark.parametrize("claims", REFUSED_CLAIMS.values(), ids=REFUSED_CLAIMS.keys())
def test_claim_checks_refuse(
    idp: TestIdP, validator: TokenValidator, clock: Clock, claims: dict[str, Any]
) -> None:
    claims = {
        name: value.replace("__ISSUER__", idp.url) if isinstance(value, str) else value
        for name, value in claims.items()
    }
    with pytest.raises(InvalidToken):
        validator.validate(timed(idp, **claims))


@pytest.mark.parametrize(
    ("claim", "offset", "accepted"),
    [
        ("exp", -LEEWAY, True),  # expired exactly the leeway ago: still within it
        ("exp", -LEEWAY + 1, True),
        ("exp", -LEEWAY - 1, False),
        ("nbf", LEEWAY, True),
        ("nbf", LEEWAY + 1, False),
        ("iat", LEEWAY, True),
        ("iat", LEEWAY + 1, False),
    ],
)
def test_leeway_boundaries(
    idp: TestIdP,
    validator: TokenValidator,
    clock: Clock,
    claim: str,
    offset: int,
    accepted: bool,
) -> None:
    token = timed(idp, **{claim: int(NOW) + offset})
    if accepted:
        assert validator.validate(token).subject
    else:
        with pytest.raises(InvalidToken):
            validator.validate(token)


def test_leeway_is_the_configured_one(idp: TestIdP, jwks_file: Path, clock: Clock) -> None:
    strict = TokenValidator(Settings(auth="on", oidc_jwks_file=jwks_file, oidc_leeway_seconds=0))
    assert strict.validate(timed(idp, exp=int(NOW))).subject
    with pytest.raises(InvalidToken):
        strict.validate(timed(idp, exp=int(NOW) - 1))
    with pytest.raises(ValidationError):
        Settings(oidc_leeway_seconds=61)
    with pytest.raises(ValidationError):
        Settings(oidc_leeway_seconds=-1)


def test_out_of_range_times_are_refused_not_a_crash(
    idp: TestIdP, validator: TokenValidator, clock: Clock
) -> None:
    """A time claim too large for a float must end as InvalidToken (a 401), not as an
    OverflowError (a 500: the middleware catches InvalidToken only)."""
    for claim, value in (("exp", 10**400), ("nbf", -(10**400)), ("iat", -(10**400))):
        token = idp.sign_raw({"alg": "RS256", "kid": idp.rsa_kid}, idp.claims(**{claim: value}))
        with contextlib.suppress(InvalidToken):  # any other exception fails the test
            validator.validate(token)


# -- signatures and algorithms -----------------------------------------------------------


def hostile(idp: TestIdP) -> dict[str, str]:
    rsa = idp.rsa_kid
    claims = idp.claims(iat=int(NOW), nbf=int(NOW), exp=int(NOW) + 300)
    good = idp.mint(**claims)
    header, payload, signature = good.split(".")
    raw = idp.sign_raw
    return {
        **MALFORMED_TOKENS,
        "alg none": idp.unsigned(**claims),
        "alg None": raw({"alg": "None", "kid": rsa}, claims).rsplit(".", 1)[0] + ".",
        "HS256 with the public key": idp.hs256_with_public_key(**claims),
        "bad signature": idp.bad_signature(**claims),
        "unknown kid": idp.unknown_kid(**claims),
        "signature of another token": f"{header}.{payload}.{idp.mint().split('.')[2]}",
        "empty signature": f"{header}.{payload}.",
        "garbage signature": f"{header}.{payload}.%%%",
        "kid not a string": raw({"alg": "RS256", "kid": 5}, claims),
        "kid null": raw({"alg": "RS256", "kid": None}, claims),
        "alg as list": raw({"alg": ["RS256"], "kid": rsa}, claims),
        "RS256 header on the EC key": raw({"alg": "RS256", "kid": idp.ec_kid}, claims),
        "ES256 header on an RS256 signature": (
            f"{b64url(json.dumps({'alg': 'ES256', 'kid': rsa}).encode())}.{payload}.{signature}"
        ),
        "payload a JSON array": raw({"alg": "RS256", "kid": rsa}, "W10"),
        "payload a JSON string": raw({"alg": "RS256", "kid": rsa}, "ImEi"),
        "payload not base64": raw({"alg": "RS256", "kid": rsa}, "!!!!"),
        "payload not JSON": raw({"alg": "RS256", "kid": rsa}, "bm90anNvbg"),
        "header a JSON array": f"WyJhIl0.{payload}.{signature}",
        "unknown critical header": raw({"alg": "RS256", "kid": rsa, "crit": ["exp"]}, claims),
        "unencoded payload (b64 false)": raw({"alg": "RS256", "kid": rsa, "b64": False}, claims),
        "huge kid": raw({"alg": "RS256", "kid": "k" * 100_000}, claims),
        "four segments": good + ".x",
        "two segments": f"{header}.{payload}",
    }


def test_hostile_tokens_are_refused(idp: TestIdP, validator: TokenValidator, clock: Clock) -> None:
    failures = []
    for name, token in hostile(idp).items():
        try:
            principal = validator.validate(token)
        except InvalidToken as exc:
            if token in str(exc):
                failures.append(f"{name}: the message holds the token")
        except Exception as exc:  # anything else would be a 500
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            failures.append(f"{name}: accepted as {principal}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("allowed", "kid", "alg", "accepted"),
    [
        (["ES256"], "rsa", "RS256", False),
        (["RS256"], "ec", "ES256", False),
        (["ES256"], "ec", "ES256", True),
        (["RS256"], "rsa", "RS256", True),
        (["RS384", "PS256"], "rsa", "RS256", False),
        # Allowed, but the issuer's JWK says the key is for RS256 only.
        (["RS256", "PS256"], "rsa", "PS256", False),
    ],
)
def test_only_allowed_algorithms_are_accepted(
    idp: TestIdP,
    jwks_file: Path,
    clock: Clock,
    allowed: list[str],
    kid: str,
    alg: str,
    accepted: bool,
) -> None:
    checker = TokenValidator(settings(oidc_jwks_file=jwks_file, oidc_algorithms=allowed))
    token = timed(idp, kid=idp.rsa_kid if kid == "rsa" else idp.ec_kid, alg=alg)
    if accepted:
        assert checker.validate(token).subject
    else:
        with pytest.raises(InvalidToken):
            checker.validate(token)


@pytest.mark.parametrize(
    "value",
    ["none", "None", "NONE", "HS256", "hs384", "HS512", "RS256,HS256", "RS256, none"],
)
def test_settings_refuse_none_and_hmac_algorithms(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate({"oidc_algorithms": value})
    with pytest.raises(ValidationError):
        Settings(oidc_algorithms=[part.strip() for part in value.split(",")])
    monkeypatch.setenv("DICOMWEB_OIDC_ALGORITHMS", value)
    with pytest.raises(ValidationError):
        Settings()


def test_settings_algorithm_list_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMWEB_OIDC_ALGORITHMS", "RS256, ES256")
    assert Settings().oidc_algorithms == ["RS256", "ES256"]
    monkeypatch.delenv("DICOMWEB_OIDC_ALGORITHMS")
    defaults = Settings().oidc_algorithms
    assert defaults and not [name for name in defaults if name.upper().startswith("HS")]


# -- roles and patient -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "roles"),
    [
        ("dicomweb.read", {Role.READER}),
        ("openid dicomweb.read dicomweb.write profile", {Role.READER, Role.WRITER}),
        ("dicomweb.delete", {Role.DELETER}),
        ("dicomweb.admin", {Role.ADMIN}),
        (["dicomweb.read", "dicomweb.admin"], {Role.READER, Role.ADMIN}),
        ("openid", set()),
        ("DICOMWEB.READ reader admin", set()),  # exact values only
        ("", set()),
        (42, set()),
        (OMIT, set()),
    ],
)
def test_roles_from_scope(
    idp: TestIdP, validator: TokenValidator, clock: Clock, scope: Any, roles: set[Role]
) -> None:
    assert validator.validate(timed(idp, scope=scope)).roles == frozenset(roles)


@pytest.mark.parametrize(
    ("claims", "roles"),
    [
        ({"realm_access": {"roles": ["dicom-reader"]}}, {Role.READER}),
        (
            {"realm_access": {"roles": ["dicom-reader", "dicom-admin", "x"]}},
            {Role.READER, Role.ADMIN},
        ),
        ({"realm_access": {"roles": "dicom-admin"}}, {Role.ADMIN}),
        ({"realm_access": {"roles": ["dicom-writer"]}}, set()),  # not in the mapping
        ({"realm_access": {"roles": ["dicom-super"]}}, set()),  # maps to no archive role
        ({"realm_access": ["dicom-reader"]}, set()),
        ({"realm_access": {"roles": [{"name": "dicom-reader"}, 7]}}, set()),
        ({"scope": "dicomweb.admin"}, set()),  # scope no longer counts
        ({}, set()),
    ],
)
def test_roles_from_a_dotted_claim_path(
    idp: TestIdP, jwks_file: Path, clock: Clock, claims: dict[str, Any], roles: set[Role]
) -> None:
    checker = TokenValidator(
        settings(
            oidc_jwks_file=jwks_file,
            roles_claim="realm_access.roles",
            role_names="dicom-reader=reader,dicom-admin=admin,dicom-super=superuser",
        )
    )
    claims = {"scope": OMIT, **claims}
    assert checker.validate(timed(idp, **claims)).roles == frozenset(roles)


def test_role_names_parse_and_refuse_nonsense() -> None:
    parsed = Settings.model_validate({"role_names": "a=reader, b = writer"}).role_names
    assert parsed == {"a": "reader", "b": "writer"}
    with pytest.raises(ValidationError):
        Settings.model_validate({"role_names": "just-a-name"})


@pytest.mark.parametrize(
    ("claim_setting", "claims", "patient"),
    [
        ("patient_id", {"patient_id": "PAT-A"}, "PAT-A"),
        ("patient_id", {"patient_id": 12345}, "12345"),
        ("patient_id", {}, None),
        ("ext.patient", {"ext": {"patient": "PAT-B"}}, "PAT-B"),
        ("ext.patient", {"ext": "PAT-B"}, None),
        (None, {"patient_id": "PAT-A"}, None),
    ],
)
def test_patient_claim(
    idp: TestIdP,
    jwks_file: Path,
    clock: Clock,
    claim_setting: str | None,
    claims: dict[str, Any],
    patient: str | None,
) -> None:
    checker = TokenValidator(settings(oidc_jwks_file=jwks_file, patient_claim=claim_setting))
    assert checker.validate(timed(idp, **claims)).patient == patient


# -- keys over HTTP ----------------------------------------------------------------------


def http_validator(issuer: MockIssuer, **values: Any) -> TokenValidator:
    base: dict[str, Any] = {"oidc_issuer": issuer.idp.url, "oidc_audience": "dicomweb"}
    return TokenValidator(settings(**{**base, **values}), client=issuer.client())


def test_not_configured_is_a_configuration_error() -> None:
    with pytest.raises(AuthConfigurationError) as raised:
        TokenValidator(Settings(auth="on"))
    assert "DICOMWEB_OIDC_ISSUER" in str(raised.value)


def test_keys_by_discovery_are_fetched_once(idp: TestIdP, clock: Clock) -> None:
    issuer = MockIssuer(idp)
    checker = http_validator(issuer)
    for _ in range(5):
        assert checker.validate(timed(idp)).subject
    assert issuer.count("/.well-known/openid-configuration") == 1
    assert issuer.count("/jwks") == 1


def test_a_jwks_url_skips_discovery(idp: TestIdP, clock: Clock) -> None:
    issuer = MockIssuer(idp)
    checker = http_validator(issuer, oidc_jwks_url=f"{idp.url}/jwks")
    assert checker.validate(timed(idp)).subject
    assert issuer.count("/.well-known/openid-configuration") == 0
    assert issuer.count("/jwks") == 1


def test_unknown_kids_refetch_at_most_every_30_seconds(clock: Clock) -> None:
    idp = TestIdP()  # its own keys: this test rotates them
    try:
        issuer = MockIssuer(idp)
        checker = http_validator(issuer)
        assert checker.validate(timed(idp)).subject
        assert issuer.count("/jwks") == 1
        idp.rotate(drop_old=True)
        rotated = timed(idp)
        for _ in range(5):  # within 30 s of the last fetch: no new fetch, the kid is unknown
            with pytest.raises(InvalidToken):
                checker.validate(rotated)
            with pytest.raises(InvalidToken):
                checker.validate(idp.unknown_kid(iat=int(NOW), nbf=int(NOW), exp=int(NOW) + 300))
            clock.advance(5)
        assert issuer.count("/jwks") == 1
        clock.advance(6)  # 31 s since the fetch
        assert checker.validate(rotated).subject
        assert issuer.count("/jwks") == 2
        for _ in range(5):  # right after a fetch: unknown kids are refused without fetching
            with pytest.raises(InvalidToken):
                checker.validate(idp.unknown_kid(iat=int(NOW), nbf=int(NOW), exp=int(NOW) + 999))
        assert issuer.count("/jwks") == 2
        # The dropped key is gone from the refetched set.
        with pytest.raises(InvalidToken):
            checker.validate(timed(idp, now=clock.now, kid=idp.rsa_kid))
    finally:
        idp.stop()


def test_keys_are_refreshed_after_an_hour(idp: TestIdP, clock: Clock) -> None:
    issuer = MockIssuer(idp)
    checker = http_validator(issuer)
    assert checker.validate(timed(idp)).subject
    clock.advance(3601)
    assert checker.validate(timed(idp, now=clock.now)).subject
    assert issuer.count("/jwks") == 2


def test_unavailable_keys_refuse_tokens_without_crashing(idp: TestIdP, clock: Clock) -> None:
    issuer = MockIssuer(idp)
    issuer.jwks_status = 503
    checker = http_validator(issuer)
    with pytest.raises(InvalidToken):
        checker.validate(timed(idp))
    # Once the issuer is back (and 30 s have passed), keys load.
    issuer.jwks_status = 200
    clock.advance(31)
    assert checker.validate(timed(idp, now=clock.now)).subject
    # A later outage keeps the keys already known.
    issuer.jwks_status = 503
    clock.advance(3601)
    assert checker.validate(timed(idp, now=clock.now)).subject


def test_an_issuer_outage_after_the_key_ttl_is_not_hammered(idp: TestIdP, clock: Clock) -> None:
    """Once the cached keys are older than the TTL and the issuer is down, the validator
    keeps its keys; it must not then fetch again on every request (each fetch holds the
    validator's lock for up to the HTTP timeout): at most once per refetch interval."""
    issuer = MockIssuer(idp)
    checker = http_validator(issuer)
    assert checker.validate(timed(idp)).subject
    issuer.jwks_status = 503
    clock.advance(3601)
    for _ in range(10):
        assert checker.validate(timed(idp, now=clock.now)).subject
        clock.advance(1)
    assert issuer.count("/jwks") <= 2, f"{issuer.count('/jwks')} fetches in 10 s"


def test_discovery_without_jwks_uri_refuses_tokens(idp: TestIdP, clock: Clock) -> None:
    issuer = MockIssuer(idp)
    del issuer.discovery["jwks_uri"]
    with pytest.raises(InvalidToken):
        http_validator(issuer).validate(timed(idp))


def test_a_broken_jwks_file_refuses_tokens(idp: TestIdP, tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("{not json")
    with pytest.raises(InvalidToken):
        TokenValidator(settings(oidc_jwks_file=path)).validate(timed(idp))
    with pytest.raises(InvalidToken):
        TokenValidator(settings(oidc_jwks_file=tmp_path / "missing.json")).validate(timed(idp))


# -- introspection (RFC 7662) ------------------------------------------------------------


def introspecting(issuer: MockIssuer, **values: Any) -> TokenValidator:
    return http_validator(
        issuer,
        oidc_introspection_url=f"{issuer.idp.url}/introspect",
        oidc_client_id="archive",
        oidc_client_secret="s3cret",
        patient_claim="patient_id",
        **values,
    )


def active(idp: TestIdP, now: float = NOW, **claims: Any) -> dict[str, Any]:
    times = {"iat": int(now), "nbf": int(now), "exp": int(now) + 300}
    return {"active": True, **idp.claims(**{**times, **claims})}


def test_opaque_tokens_are_introspected_with_client_credentials(idp: TestIdP, clock: Clock) -> None:
    issuer = MockIssuer(idp)
    issuer.introspection["opaque-1"] = active(
        idp, sub="bob", scope="dicomweb.write", patient_id="PAT-A", client_id="app", jti="j1"
    )
    principal = introspecting(issuer).validate("opaque-1")
    assert principal.subject == "bob"
    assert principal.roles == frozenset({Role.WRITER})
    assert principal.patient == "PAT-A"
    assert principal.client_id == "app"
    assert principal.token_id == "j1"
    assert principal.expires_at == int(NOW) + 300
    (request,) = [r for r in issuer.requests if r.url.path == "/introspect"]
    assert request.method == "POST"
    assert (
        request.headers["authorization"] == "Basic " + base64.b64encode(b"archive:s3cret").decode()
    )
    form = parse_qs(request.content.decode())
    assert form["token"] == ["opaque-1"]
    assert "opaque-1" not in str(request.url)  # never in a URL (logs)


@pytest.mark.parametrize(
    "answer",
    [
        {"active": False},
        {"active": "true", "sub": "x", "scope": "dicomweb.read"},
        {},
        ["active"],
    ],
    ids=["inactive", "active as string", "empty", "not an object"],
)
def test_inactive_or_odd_introspection_answers_refuse(
    idp: TestIdP, clock: Clock, answer: Any
) -> None:
    issuer = MockIssuer(idp)
    issuer.introspection["opaque"] = answer
    with pytest.raises(InvalidToken):
        introspecting(issuer).validate("opaque")


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(NOW) - 120},
        {"aud": "other-api"},
        {"iss": "https://evil.example.org"},
        {"sub": OMIT},
    ],
    ids=["expired", "wrong aud", "wrong iss", "no sub"],
)
def test_active_introspection_answers_are_still_checked(
    idp: TestIdP, clock: Clock, claims: dict[str, Any]
) -> None:
    issuer = MockIssuer(idp)
    issuer.introspection["opaque"] = active(idp, **claims)
    with pytest.raises(InvalidToken):
        introspecting(issuer).validate("opaque")


def test_introspection_audience_is_checked_without_exp(idp: TestIdP, clock: Clock) -> None:
    """``exp`` is optional in an introspection answer (RFC 7662 2.2); the audience check
    must not depend on it: a token meant for another API is not ours either way."""
    issuer = MockIssuer(idp)
    issuer.introspection["opaque"] = active(idp, exp=OMIT, aud="other-api")
    with pytest.raises(InvalidToken):
        introspecting(issuer).validate("opaque")


def test_introspection_answers_without_optional_iss_are_accepted(
    idp: TestIdP, clock: Clock
) -> None:
    """``iss`` is optional in an introspection answer (RFC 7662 2.2): the configured
    introspection endpoint speaks for the configured issuer."""
    issuer = MockIssuer(idp)
    issuer.introspection["opaque"] = active(idp, iss=OMIT)
    assert introspecting(issuer).validate("opaque").subject


def test_introspection_failures_refuse(idp: TestIdP, clock: Clock) -> None:
    issuer = MockIssuer(idp)
    issuer.introspection_status = 500
    with pytest.raises(InvalidToken):
        introspecting(issuer).validate("opaque")

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down", request=request)

    checker = TokenValidator(
        settings(oidc_introspection_url="http://idp.invalid/introspect"),
        client=httpx.Client(transport=httpx.MockTransport(broken)),
    )
    with pytest.raises(InvalidToken) as raised:
        checker.validate("secret-opaque-token")
    assert "secret-opaque-token" not in str(raised.value)


def test_opaque_tokens_without_introspection_are_refused(
    validator: TokenValidator, clock: Clock
) -> None:
    with pytest.raises(InvalidToken):
        validator.validate("opaque-token")


def test_introspection_is_cached_but_never_beyond_exp_or_a_minute(
    idp: TestIdP, clock: Clock
) -> None:
    issuer = MockIssuer(idp)
    checker = introspecting(issuer)
    issuer.introspection["short"] = active(idp, exp=int(NOW) + 10)
    issuer.introspection["long"] = active(idp, exp=int(NOW) + 3600)
    for _ in range(3):
        checker.validate("short")
        checker.validate("long")
    assert issuer.count("/introspect") == 2
    # The IdP revokes both; the short one's cache ends at its exp, the long one's in <= 60 s.
    issuer.introspection.clear()
    clock.advance(11)
    with pytest.raises(InvalidToken):
        checker.validate("short")
    assert checker.validate("long").subject  # still cached
    clock.advance(50)
    with pytest.raises(InvalidToken):
        checker.validate("long")


def test_introspected_tokens_without_exp_need_a_subject(idp: TestIdP, clock: Clock) -> None:
    issuer = MockIssuer(idp)
    issuer.introspection["no-exp"] = active(idp, exp=OMIT)
    issuer.introspection["no-exp-no-sub"] = active(idp, exp=OMIT, sub=OMIT)
    checker = introspecting(issuer)
    principal = checker.validate("no-exp")
    assert principal.expires_at is None
    with pytest.raises(InvalidToken):
        checker.validate("no-exp-no-sub")


def test_revoked_opaque_tokens_stop_working_within_a_minute_through_the_middleware(
    idp: TestIdP, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validator caches introspection answers for at most 60 s so that revocation is
    honoured soon; the middleware's own cache of validated tokens must not stretch that."""
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from dicomweb_server.auth import middleware

    monkeypatch.setattr(middleware, "time", clock)
    issuer = MockIssuer(idp)
    issuer.introspection["opaque"] = active(idp, exp=int(NOW) + 3600)

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("ok")

    inner = Starlette(routes=[Route("/x", endpoint)])
    app = middleware.AuthenticationMiddleware(inner, introspecting(issuer))

    async def statuses() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": "Bearer opaque"}
        async with httpx.AsyncClient(transport=transport, base_url="http://archive") as client:
            first = (await client.get("/x", headers=headers)).status_code
            issuer.introspection.clear()  # revoked at the issuer
            clock.advance(61)
            second = (await client.get("/x", headers=headers)).status_code
        return [first, second]

    assert anyio.run(statuses) == [200, 401]


def test_the_refetch_limit_is_a_setting(clock: Clock) -> None:
    idp = TestIdP()  # its own keys: this test rotates them
    try:
        issuer = MockIssuer(idp)
        checker = http_validator(issuer, oidc_jwks_refetch_seconds=5)
        assert checker.validate(timed(idp)).subject
        idp.rotate(drop_old=True)
        rotated = timed(idp)
        clock.advance(4)
        with pytest.raises(InvalidToken):
            checker.validate(rotated)
        assert issuer.count("/jwks") == 1
        clock.advance(1)  # 5 s since the fetch
        assert checker.validate(rotated).subject
        assert issuer.count("/jwks") == 2
    finally:
        idp.stop()
