"""The archive's error tree.

Services raise these; ``api/errors.py`` maps them to HTTP responses in one place, so no
service knows about status codes::

    ArchiveError
    ├── BadRequest            malformed parameters, bodies, UIDs             -> 400
    │   └── UnsupportedQuery  a query key or value the server cannot honour  -> 400
    ├── Unauthorized          no valid access token                          -> 401
    ├── Forbidden             valid token without the permission             -> 403
    ├── NotFound              no such study, series, instance, frame, value  -> 404
    ├── NotAcceptable         no offered representation fits Accept          -> 406
    ├── UnsupportedMediaType  request body of a type the resource refuses    -> 415
    ├── PayloadTooLarge       request beyond a configured limit              -> 413
    └── StorageError          the blob store or index failed                 -> 503
"""

from __future__ import annotations


class ArchiveError(Exception):
    """Base of every error the archive raises on purpose."""

    status_code = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ArchiveError):
    """The request is malformed."""

    status_code = 400


class UnsupportedQuery(BadRequest):
    """A query key or value that the server does not support; never silently ignored."""


class Unauthorized(ArchiveError):
    """No valid access token (RFC 6750 3.1); carries its ``WWW-Authenticate`` header."""

    status_code = 401


class Forbidden(ArchiveError):
    """A valid token without the permission the resource needs (RFC 6750 3.1)."""

    status_code = 403


class NotFound(ArchiveError):
    """The addressed resource does not exist."""

    status_code = 404


class NotAcceptable(ArchiveError):
    """None of the representations the client accepts can be produced."""

    status_code = 406


class UnsupportedMediaType(ArchiveError):
    """The request body's media type is not accepted by this resource."""

    status_code = 415


class PayloadTooLarge(ArchiveError):
    """The request exceeds a configured limit."""

    status_code = 413


class StorageError(ArchiveError):
    """The blob store or the index failed; the request may be retried."""

    status_code = 503
