"""Authentication for every request: a pure ASGI middleware in front of the application.

It runs before routing, so an unauthenticated caller learns nothing, not even which paths
exist: every path except the public ones answers 401. The validated caller is left in the
scope's state for authorization (``auth/permissions.py``), patient scoping and auditing.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomweb_server.api.errors import error_response
from dicomweb_server.auth.permissions import PUBLIC_PATHS
from dicomweb_server.auth.principal import ANONYMOUS, SCOPE_KEY, Principal
from dicomweb_server.auth.tokens import InvalidToken, TokenValidator, token_fingerprint

log = logging.getLogger(__name__)


_CACHE_SIZE = 10_000
# No longer than the validator caches introspection answers, so a revoked opaque token stops
# working within a minute (docs/security.md).
_CACHE_SECONDS = 60.0

#: Called for every refused request: (scope, reason) -> None. The audit trail hooks in here.
FailureHook = Callable[[Scope, str], Awaitable[None]]


def is_preflight(scope: Scope) -> bool:
    """A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method (Fetch
    standard). Browsers never send credentials with it, so it must pass unauthenticated."""
    if scope["method"] != "OPTIONS":
        return False
    names = {name for name, _ in scope["headers"]}
    return b"origin" in names and b"access-control-request-method" in names


def challenge(error: str | None = None, description: str | None = None) -> str:
    """A ``WWW-Authenticate: Bearer`` value (RFC 6750 3); ``error`` only when a token was sent."""
    value = 'Bearer realm="dicomweb"'
    if error:
        value += f', error="{error}"'
    if description:
        clean = description.encode("ascii", "replace").decode("ascii")
        clean = "".join(c if " " <= c <= "~" else " " for c in clean)
        clean = clean.replace("\\", "").replace('"', "'")
        value += f', error_description="{clean}"'
    return value


class _ValidatedCache:
    """Recently validated tokens by hash, so a viewer's hundred frame requests verify one
    signature, not a hundred. An entry never outlives its token."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Principal | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] <= time.time():
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: str, principal: Principal) -> None:
        until = time.time() + _CACHE_SECONDS
        if principal.expires_at is not None:
            until = min(until, principal.expires_at)
        with self._lock:
            self._items[key] = (until, principal)
            while len(self._items) > _CACHE_SIZE:
                self._items.popitem(last=False)


class AuthenticationMiddleware:
    """Validates ``Authorization: Bearer`` on every non-public request (RFC 6750 2.1).

    With ``validator=None`` authentication is off (loopback only, enforced by the CLI) and
    every request acts as `ANONYMOUS`.
    """

    def __init__(
        self,
        app: ASGIApp,
        validator: TokenValidator | None,
        on_failure: FailureHook | None = None,
        cors: bool = False,
    ) -> None:
        self.app = app
        self.validator = validator
        self.cors = cors
        self.on_failure = on_failure
        self._cache = _ValidatedCache()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        if self.validator is None:
            state[SCOPE_KEY] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        if (scope["path"] in PUBLIC_PATHS and scope["method"] in ("GET", "HEAD")) or (
            # Only a real CORS layer answers preflights; without one an unauthenticated
            # OPTIONS must not reach the router and tell which paths exist.
            self.cors and is_preflight(scope)
        ):
            await self.app(scope, receive, send)
            return
        token = _bearer_token(scope)
        if token is None:
            await self._refuse(scope, receive, send, "no bearer access token was sent", None)
            return
        key = hashlib.sha256(token.encode()).hexdigest()
        principal = self._cache.get(key)
        if principal is None:
            try:
                principal = await anyio.to_thread.run_sync(self.validator.validate, token)
            except InvalidToken as exc:
                log.info("refused token %s: %s", token_fingerprint(token), exc)
                await self._refuse(scope, receive, send, str(exc), "invalid_token")
                return
            self._cache.put(key, principal)
        state[SCOPE_KEY] = principal
        await self.app(scope, receive, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, reason: str, error: str | None
    ) -> None:
        if self.on_failure is not None:
            await self.on_failure(scope, reason)
        request = Request(scope, receive)
        message = f"authentication required: {reason}"
        response = error_response(
            request, 401, message, {"WWW-Authenticate": challenge(error, reason if error else None)}
        )
        await response(scope, receive, send)


def _bearer_token(scope: Scope) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None
