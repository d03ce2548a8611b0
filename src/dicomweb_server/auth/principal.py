"""Who a request acts for, once its token is validated: the input of every access decision
and of every audit record."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    """The archive's roles (docs/security.md)."""

    READER = "reader"
    WRITER = "writer"
    DELETER = "deleter"
    #: Reads operational metrics only: what a Prometheus scraper is given.
    MONITOR = "monitor"
    ADMIN = "admin"


class Permission(StrEnum):
    """What a route needs; each role grants some permissions, ``admin`` all of them."""

    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    MONITOR = "monitor"
    ADMIN = "admin"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.READER: frozenset({Permission.READ}),
    Role.WRITER: frozenset({Permission.WRITE}),
    Role.DELETER: frozenset({Permission.DELETE}),
    Role.MONITOR: frozenset({Permission.MONITOR}),
    Role.ADMIN: frozenset(Permission),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    ``subject`` and ``issuer`` identify the user or service (``sub``, ``iss``); ``token_id``
    is the token's ``jti`` when it has one: the only part of a token that may be recorded.
    ``patient`` restricts the caller to one patient's studies (the configured patient claim).
    ``anonymous`` marks requests served with authentication off.
    """

    subject: str
    issuer: str | None = None
    token_id: str | None = None
    roles: frozenset[Role] = field(default_factory=frozenset)
    patient: str | None = None
    client_id: str | None = None
    anonymous: bool = False
    expires_at: float | None = None

    @property
    def permissions(self) -> frozenset[Permission]:
        granted: set[Permission] = set()
        for role in self.roles:
            granted |= ROLE_PERMISSIONS[role]
        return frozenset(granted)

    def allows(self, permission: Permission) -> bool:
        return permission in self.permissions


#: The caller when authentication is off (loopback only): every permission, no patient limit.
ANONYMOUS = Principal(subject="anonymous", roles=frozenset({Role.ADMIN}), anonymous=True)

#: Where the authentication middleware leaves the caller in the ASGI scope's state.
SCOPE_KEY = "principal"
