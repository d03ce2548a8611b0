"""Validating OAuth 2.0 bearer access tokens (RFC 6750) from an OIDC issuer.

JWT access tokens (RFC 9068) are verified locally with joserfc: the signature against the
issuer's JWKS, then ``iss``, ``aud``, ``exp``, ``nbf`` and ``iat`` with a small leeway. Only
the configured asymmetric algorithms are accepted, so an unsigned token (``alg: none``) or
one "signed" with HMAC using the issuer's public key as the secret is refused whatever its
claims say. Keys are cached; a token naming an unknown ``kid`` makes the validator fetch
the JWKS again (at most once per ``oidc_jwks_refetch_seconds``), which is how key rotation
reaches a running archive. Opaque tokens go to the RFC 7662 introspection endpoint when one is
configured; answers are cached no longer than the token lives.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from dicomweb_server.auth.principal import Principal, Role
from dicomweb_server.settings import Settings

_JWKS_TTL = 3600.0
_INTROSPECTION_CACHE_SECONDS = 60.0
_INTROSPECTION_CACHE_SIZE = 10_000
_HTTP_TIMEOUT = 10.0


class InvalidToken(Exception):
    """The token cannot be accepted; the message is safe to show (it never holds the token)."""


class AuthConfigurationError(Exception):
    """Authentication is on but the settings do not say where tokens come from."""


def token_fingerprint(token: str) -> str:
    """A short, irreversible name for a token, for logs that must not hold the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass
class _Keys:
    keys: KeySet
    fetched: float


class TokenValidator:
    """Turns a bearer token into a `Principal`, or raises `InvalidToken`.

    Blocking (JWKS and introspection requests use HTTP); call it from a worker thread.
    """

    def __init__(self, settings: Settings, client: httpx.Client | None = None) -> None:
        if not (
            settings.oidc_issuer
            or settings.oidc_jwks_url
            or settings.oidc_jwks_file
            or settings.oidc_introspection_url
        ):
            raise AuthConfigurationError(
                "authentication is on but no token issuer is configured: set "
                "DICOMWEB_OIDC_ISSUER (or DICOMWEB_OIDC_JWKS_URL, DICOMWEB_OIDC_JWKS_FILE, "
                "DICOMWEB_OIDC_INTROSPECTION_URL), or serve on a loopback address with "
                "authentication off (DICOMWEB_AUTH=off or serve --no-auth)"
            )
        self.settings = settings
        self._client = client or httpx.Client(timeout=_HTTP_TIMEOUT)
        self._lock = threading.Lock()
        self._keys: _Keys | None = None
        self._last_fetch_attempt = 0.0
        self._jwks_url: str | None = settings.oidc_jwks_url
        self._introspected: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        # joserfc checks the header's algorithm against this registry: anything outside the
        # allow-list (none, HS256, ...) fails before a key is even looked at.
        self._registry = JWSRegistry(algorithms=list(settings.oidc_algorithms))

    # -- public ---------------------------------------------------------------------------

    def validate(self, token: str) -> Principal:
        """The principal a bearer token stands for."""
        if token.count(".") == 2:
            return self._validate_jwt(token)
        if self.settings.oidc_introspection_url:
            return self._introspect(token)
        raise InvalidToken("the access token is not a JWT and no introspection is configured")

    def close(self) -> None:
        self._client.close()

    # -- JWT ------------------------------------------------------------------------------

    def _validate_jwt(self, token: str) -> Principal:
        header = _header(token)
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.settings.oidc_algorithms:
            raise InvalidToken(f"token algorithm {_safe(algorithm)} is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("token key id (kid) is not a string")
        keys = self._key_set(kid)
        # Without a kid, any of the issuer's keys may have signed it: try each.
        candidates = [keys] if kid is not None or len(keys.keys) == 1 else keys.keys
        decoded = None
        for candidate in candidates:
            try:
                decoded = jwt.decode(
                    token, candidate, algorithms=[algorithm], registry=self._registry
                )
                break
            except JoseError as exc:
                error = f"token signature is not valid ({_safe(exc.error)})"
            except (ValueError, TypeError) as exc:  # malformed segments, unusable key
                error = f"token is malformed or signed by an unknown key ({_safe(str(exc))})"
        if decoded is None:
            raise InvalidToken(error)
        claims = dict(decoded.claims)
        self._check_claims(claims)
        return self._principal(claims)

    def _check_claims(self, claims: Mapping[str, Any], *, introspected: bool = False) -> None:
        """Registered claims (RFC 7519 4.1). An introspection answer (RFC 7662 2.2) may omit
        ``exp`` and ``iss``; a JWT access token (RFC 9068 2.2) may not."""
        now = time.time()
        leeway = self.settings.oidc_leeway_seconds
        exp = _timestamp(claims, "exp")
        if exp is None and not introspected:
            raise InvalidToken("token has no expiry time (exp)")
        if exp is not None and now > exp + leeway:
            raise InvalidToken("token has expired")
        nbf = _timestamp(claims, "nbf")
        if nbf is not None and now + leeway < nbf:
            raise InvalidToken("token is not valid yet (nbf)")
        iat = _timestamp(claims, "iat")
        if iat is not None and now + leeway < iat:
            raise InvalidToken("token was issued in the future (iat)")
        issuer = self.settings.oidc_issuer
        checks_issuer = issuer is not None and (not introspected or "iss" in claims)
        if checks_issuer and claims.get("iss") != issuer:
            raise InvalidToken("token issuer (iss) is not the configured issuer")
        audience = self.settings.oidc_audience
        if audience is not None:
            aud = claims.get("aud")
            audiences = aud if isinstance(aud, list) else [aud]
            if audience not in audiences:
                raise InvalidToken("token audience (aud) does not include this archive")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise InvalidToken("token has no subject (sub)")

    # -- keys -----------------------------------------------------------------------------

    def _key_set(self, kid: str | None) -> KeySet:
        with self._lock:
            keys = self._keys
            now = time.monotonic()
            stale = keys is None or now - keys.fetched > _JWKS_TTL
            unknown = kid is not None and keys is not None and not _has_kid(keys.keys, kid)
            # Every fetch, successful or not, waits out the interval: an issuer that is down
            # or a flood of tokens with made-up kids never turns into a request per token.
            refetch = self.settings.oidc_jwks_refetch_seconds
            if (stale or unknown) and now - self._last_fetch_attempt >= refetch:
                self._last_fetch_attempt = now
                try:
                    keys = _Keys(self._load_keys(), time.monotonic())
                    self._keys = keys
                except InvalidToken:
                    if keys is None:
                        raise
            if keys is None:
                raise InvalidToken("the issuer's signing keys are unavailable")
            if kid is not None and not _has_kid(keys.keys, kid):
                raise InvalidToken("token is signed by an unknown key (kid)")
            return keys.keys

    def _load_keys(self) -> KeySet:
        settings = self.settings
        try:
            if settings.oidc_jwks_file is not None:
                data = json.loads(settings.oidc_jwks_file.read_text())
            else:
                data = self._get_json(self._jwks_location())
            return KeySet.import_key_set(data)
        except (OSError, ValueError, httpx.HTTPError, JoseError) as exc:
            raise InvalidToken(f"the issuer's signing keys are unavailable ({exc})") from exc

    def _jwks_location(self) -> str:
        if self._jwks_url is None:
            issuer = (self.settings.oidc_issuer or "").rstrip("/")
            discovery = self._get_json(f"{issuer}/.well-known/openid-configuration")
            location = discovery.get("jwks_uri")
            if not isinstance(location, str):
                raise ValueError("the issuer's discovery document has no jwks_uri")
            self._jwks_url = location
        return self._jwks_url

    def _get_json(self, url: str) -> dict[str, Any]:
        response = self._client.get(url)
        response.raise_for_status()
        data = response.json()
        if not isinstance(data, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return data

    # -- introspection (RFC 7662) ---------------------------------------------------------

    def _introspect(self, token: str) -> Principal:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.time()
        with self._lock:
            cached = self._introspected.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        settings = self.settings
        auth: tuple[str | bytes, str | bytes] | None = None
        if settings.oidc_client_id is not None:
            secret = settings.oidc_client_secret
            auth = (settings.oidc_client_id, secret.get_secret_value() if secret else "")
        try:
            response = self._client.post(
                str(settings.oidc_introspection_url),
                data={"token": token, "token_type_hint": "access_token"},
                auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
                headers={"Accept": "application/json"},
            )
            response.raise_for_status()
            claims = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise InvalidToken(f"token introspection failed ({type(exc).__name__})") from exc
        if not isinstance(claims, dict) or claims.get("active") is not True:
            raise InvalidToken("token is not active")
        self._check_claims(claims, introspected=True)
        principal = self._principal(claims)
        # Cached no longer than the token lives, and briefly, so revocation is honoured soon.
        until = now + _INTROSPECTION_CACHE_SECONDS
        exp = _timestamp(claims, "exp")
        if exp is not None:
            until = min(until, exp)
        with self._lock:
            self._introspected[key] = (until, principal)
            while len(self._introspected) > _INTROSPECTION_CACHE_SIZE:
                self._introspected.popitem(last=False)
        return principal

    # -- claims to principal --------------------------------------------------------------

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        settings = self.settings
        values = _claim_values(claims, settings.roles_claim)
        roles = frozenset(
            Role(settings.role_names[value])
            for value in values
            if value in settings.role_names
            and settings.role_names[value] in Role._value2member_map_
        )
        patient = None
        if settings.patient_claim:
            found = _lookup(claims, settings.patient_claim)
            if found is not None:
                patient = str(found)
        jti = claims.get("jti")
        client = claims.get("client_id", claims.get("azp"))
        exp = _timestamp(claims, "exp")
        return Principal(
            subject=str(claims.get("sub")),
            issuer=str(claims["iss"]) if claims.get("iss") is not None else None,
            token_id=str(jti)[:200] if jti is not None else None,
            roles=roles,
            patient=patient,
            client_id=str(client)[:200] if client is not None else None,
            expires_at=exp,
        )


def _header(token: str) -> dict[str, Any]:
    import base64

    segment = token.split(".", 1)[0]
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidToken("token header is not valid base64url JSON") from exc
    if not isinstance(header, dict):
        raise InvalidToken("token header is not a JSON object")
    return header


def _timestamp(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim (RFC 7519 2) as seconds, ``None`` when absent."""
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidToken(f"token claim {name} is not a number")
    try:
        number = float(value)
    except OverflowError as exc:
        raise InvalidToken(f"token claim {name} is out of range") from exc
    if number != number or number in (float("inf"), float("-inf")):
        raise InvalidToken(f"token claim {name} is out of range")
    return number


def _safe(value: object) -> str:
    """A value from a token, short and ASCII, fit for an error message and a header."""
    return ascii(value)[:40]


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys.keys)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _lookup(claims: Mapping[str, Any], path: str) -> Any:
    current: Any = claims
    for step in path.split("."):
        if not isinstance(current, Mapping) or step not in current:
            return None
        current = current[step]
    return current


def _claim_values(claims: Mapping[str, Any], path: str) -> list[str]:
    """Role claim values: a space-separated string (``scope``) or a list of strings."""
    found = _lookup(claims, path)
    if isinstance(found, str):
        return found.split()
    if isinstance(found, list):
        return [item for item in found if isinstance(item, str)]
    return []
