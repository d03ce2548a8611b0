"""A small OpenID Connect provider on loopback, for authentication tests.

It serves the discovery document (``/.well-known/openid-configuration``), its public keys
(``/jwks``) and RFC 7662 token introspection (``/introspect``, HTTP Basic client
authentication), and mints access tokens: well-formed ones with sensible defaults
(RFC 9068 claims) and the hostile variants an archive must refuse (unsigned, HMAC "signed"
with the public key, bad signature, unknown key, expired, not yet valid, wrong issuer or
audience, malformed). Keys are generated at start; `TestIdP.rotate` publishes a new one.

    with TestIdP() as idp:
        token = idp.mint(scope="dicomweb.read", patient_id="PAT-A")
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

#: Pass as a claim value to `TestIdP.mint` to leave that claim out of the token.
OMIT: Any = object()

#: Tokens that are not a JWT at all, or not a parsable one.
MALFORMED_TOKENS = {
    "not-a-jwt": "abc",
    "three-empty-looking-segments": "a.b.c",
    "garbage-base64": "%%%garbage!!.~~~not*base64~~~.@@@",
    "header-not-json": f"{base64.urlsafe_b64encode(b'not json').decode().rstrip('=')}.e30.",
}

_ALGORITHMS = {"RSA": "RS256", "EC": "ES256"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


SigningKey = RSAKey | ECKey


class TestIdP:
    """An OIDC issuer on ``http://127.0.0.1:<port>``; a context manager (start/stop)."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *,
        audience: str = "dicomweb",
        client_id: str = "dicomweb-archive",
        client_secret: str = "introspection-secret-3f9c",
    ) -> None:
        self.audience = audience
        self.client_id = client_id
        self.client_secret = client_secret
        self._lock = threading.Lock()
        self.keys: dict[str, SigningKey] = {}
        self.published: list[str] = []
        self.rsa_kid = self._add_key(RSAKey.generate_key(2048, parameters=self._params("rsa")))
        self.ec_kid = self._add_key(ECKey.generate_key("P-256", parameters=self._params("ec")))
        self.signing_kid = self.rsa_kid
        # Observations for tests.
        self.jwks_fetch_times: list[float] = []
        self.discovery_fetches = 0
        self.introspections = 0
        self.failed_client_auth = 0
        self._opaque: dict[str, dict[str, Any]] = {}
        self._inactive: set[str] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The issuer identifier (``iss``), also the base of every endpoint."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    @property
    def introspection_url(self) -> str:
        return f"{self.url}/introspect"

    def start(self) -> TestIdP:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for a serve_forever that never ran
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> TestIdP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def server_env(self) -> dict[str, str]:
        """The archive settings that trust this issuer (discovery, audience, introspection)."""
        return {
            "DICOMWEB_AUTH": "on",
            "DICOMWEB_OIDC_ISSUER": self.url,
            "DICOMWEB_OIDC_AUDIENCE": self.audience,
            "DICOMWEB_OIDC_INTROSPECTION_URL": self.introspection_url,
            "DICOMWEB_OIDC_CLIENT_ID": self.client_id,
            "DICOMWEB_OIDC_CLIENT_SECRET": self.client_secret,
        }

    # -- keys -----------------------------------------------------------------------------

    @staticmethod
    def _params(prefix: str) -> Any:  # joserfc's KeyParameters
        return {"kid": f"{prefix}-{secrets.token_hex(4)}", "use": "sig"}

    def _add_key(self, key: SigningKey, *, publish: bool = True) -> str:
        kid = str(key.kid)
        with self._lock:
            self.keys[kid] = key
            if publish:
                self.published.append(kid)
        return kid

    def jwks(self) -> dict[str, Any]:
        """The published public keys, as served at ``/jwks``."""
        with self._lock:
            keys = [self.keys[kid] for kid in self.published]
        return {
            "keys": [
                {**key.as_dict(private=False), "alg": _ALGORITHMS[key.key_type]} for key in keys
            ]
        }

    def rotate(self, *, drop_old: bool = True) -> str:
        """Publish a new RSA signing key (new kid) and sign with it from now on; the previous
        signing key leaves the JWKS unless ``drop_old`` is false. Returns the new kid."""
        old = self.signing_kid
        kid = self._add_key(RSAKey.generate_key(2048, parameters=self._params("rsa")))
        with self._lock:
            self.signing_kid = kid
            if drop_old and old in self.published:
                self.published.remove(old)
        return kid

    @property
    def jwks_fetches(self) -> int:
        with self._lock:
            return len(self.jwks_fetch_times)

    @property
    def last_jwks_fetch(self) -> float | None:
        with self._lock:
            return self.jwks_fetch_times[-1] if self.jwks_fetch_times else None

    # -- tokens ---------------------------------------------------------------------------

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Default access token claims with ``overrides``; an `OMIT` value drops a claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": self.audience,
            "sub": "user-" + secrets.token_hex(3),
            "client_id": "test-viewer",
            "exp": now + 300,
            "iat": now,
            "nbf": now,
            "jti": secrets.token_hex(8),
            "scope": "dicomweb.read",
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not OMIT}

    def mint(
        self,
        *,
        alg: str | None = None,
        kid: str | None = None,
        key: SigningKey | None = None,
        header_overrides: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed JWT access token. ``key`` defaults to the key of ``kid`` (the current
        signing key by default); ``alg`` to the key type's algorithm."""
        if key is None:
            kid = kid or self.signing_kid
            key = self.keys[kid]
        elif kid is None:
            kid = str(key.kid) if key.kid else None
        algorithm = alg or _ALGORITHMS[key.key_type]
        header: dict[str, Any] = {"typ": "at+jwt", "alg": algorithm}
        if kid is not None:
            header["kid"] = kid
        header.update(header_overrides or {})
        header = {name: value for name, value in header.items() if value is not OMIT}
        return jwt.encode(header, self.claims(**claims), key, algorithms=[algorithm])

    def sign_raw(
        self, header: dict[str, Any], payload: dict[str, Any] | str, kid: str | None = None
    ) -> str:
        """RS256 over an arbitrary header and payload (a dict, or a ready base64url segment),
        with the RSA key ``kid`` (the current signing key by default), whatever the header
        says: for the odd tokens joserfc refuses to make (non-string kid, list alg, ...)."""
        key = self.keys[kid or self.signing_kid]
        assert isinstance(key, RSAKey) and key.private_key is not None
        segment = payload if isinstance(payload, str) else _json_segment(payload)
        signing_input = f"{_json_segment(header)}.{segment}"
        signature = key.private_key.sign(
            signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        return f"{signing_input}.{b64url(signature)}"

    def unsigned(self, **claims: Any) -> str:
        """``alg: none``: header and payload, empty signature (RFC 7519 6.1)."""
        header = {"typ": "JWT", "alg": "none"}
        return f"{_json_segment(header)}.{_json_segment(self.claims(**claims))}."

    def hs256_with_public_key(self, **claims: Any) -> str:
        """HS256 "signed" with the signing key's public PEM as the HMAC secret: the classic
        algorithm-confusion attack on verifiers that take the algorithm from the header."""
        key = self.keys[self.signing_kid]
        secret = key.as_pem(private=False)
        header = {"typ": "JWT", "alg": "HS256", "kid": self.signing_kid}
        signing_input = f"{_json_segment(header)}.{_json_segment(self.claims(**claims))}"
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(signature)}"

    def bad_signature(self, **claims: Any) -> str:
        """Signed by a key the issuer never published, under the real signing key's kid."""
        impostor = RSAKey.generate_key(2048, parameters={"kid": self.signing_kid})
        return self.mint(key=impostor, kid=self.signing_kid, **claims)

    def unknown_kid(self, **claims: Any) -> str:
        """Signed by an unpublished key with a kid the JWKS does not hold."""
        stranger = RSAKey.generate_key(2048, parameters=self._params("unknown"))
        return self.mint(key=stranger, **claims)

    def expired(self, **claims: Any) -> str:
        """``exp`` two minutes ago: beyond any allowed clock skew."""
        now = int(time.time())
        return self.mint(**{"exp": now - 120, "iat": now - 420, "nbf": now - 420, **claims})

    def not_yet_valid(self, **claims: Any) -> str:
        """``nbf`` two minutes from now."""
        now = int(time.time())
        return self.mint(**{"nbf": now + 120, "exp": now + 600, **claims})

    def wrong_issuer(self, **claims: Any) -> str:
        return self.mint(**{"iss": "https://evil.example.org", **claims})

    def wrong_audience(self, **claims: Any) -> str:
        return self.mint(**{"aud": "some-other-api", **claims})

    def hostile_tokens(self, **claims: Any) -> dict[str, str]:
        """Every token an archive must refuse with ``invalid_token``, by name."""
        return {
            **MALFORMED_TOKENS,
            "bad-signature": self.bad_signature(**claims),
            "alg-none": self.unsigned(**claims),
            "hs256-public-key": self.hs256_with_public_key(**claims),
            "unknown-kid": self.unknown_kid(**claims),
            "expired": self.expired(**claims),
            "future-nbf": self.not_yet_valid(**claims),
            "wrong-iss": self.wrong_issuer(**claims),
            "wrong-aud": self.wrong_audience(**claims),
        }

    # -- opaque tokens (introspection) ----------------------------------------------------

    def opaque(self, **claims: Any) -> str:
        """A random opaque token that introspection answers as active with these claims."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._opaque[token] = {**self.claims(**claims), "token_type": "Bearer"}
        return token

    def revoke(self, token: str) -> None:
        """Introspection answers ``{"active": false}`` for this token from now on."""
        with self._lock:
            self._inactive.add(token)

    def introspect(self, token: str) -> dict[str, Any]:
        with self._lock:
            claims = self._opaque.get(token)
            inactive = token in self._inactive
        if claims is None or inactive or claims.get("exp", float("inf")) <= time.time():
            return {"active": False}
        return {"active": True, **claims}

    # -- HTTP -----------------------------------------------------------------------------

    def _client_authenticated(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode()
        except ValueError:
            return False
        client_id, _, secret = decoded.partition(":")
        return hmac.compare_digest(client_id, self.client_id) and hmac.compare_digest(
            secret, self.client_secret
        )

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send_json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/.well-known/openid-configuration":
                    with idp._lock:
                        idp.discovery_fetches += 1
                    self._send_json(
                        200,
                        {
                            "issuer": idp.url,
                            "jwks_uri": idp.jwks_url,
                            "introspection_endpoint": idp.introspection_url,
                            "token_endpoint": f"{idp.url}/token",
                            "response_types_supported": ["code"],
                            "subject_types_supported": ["public"],
                            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                        },
                    )
                elif path == "/jwks":
                    with idp._lock:
                        idp.jwks_fetch_times.append(time.time())
                    self._send_json(200, idp.jwks())
                else:
                    self._send_json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("latin-1")
                if self.path.split("?", 1)[0] != "/introspect":
                    self._send_json(404, {"error": "not_found"})
                    return
                if not idp._client_authenticated(self.headers.get("Authorization")):
                    with idp._lock:
                        idp.failed_client_auth += 1
                    self._send_json(401, {"error": "invalid_client"})
                    return
                with idp._lock:
                    idp.introspections += 1
                token = parse_qs(body).get("token", [""])[0]
                self._send_json(200, idp.introspect(token))

        return Handler
