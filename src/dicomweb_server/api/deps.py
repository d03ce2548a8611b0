"""Dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from dicomweb_server.dicom.uids import is_valid_uid
from dicomweb_server.errors import BadRequest
from dicomweb_server.services.archive import Archive


def get_archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


ArchiveDep = Annotated[Archive, Depends(get_archive)]


def check_uid(value: str, what: str) -> str:
    """Strict UID grammar for every path segment (PS3.5 9.1)."""
    if not is_valid_uid(value):
        raise BadRequest(f"invalid {what} UID {value[:80]!r} in the request path")
    return value


def check_path(study: str, series: str | None = None, instance: str | None = None) -> None:
    """Validate the UIDs of a study / series / instance path."""
    check_uid(study, "Study Instance")
    if series is not None:
        check_uid(series, "Series Instance")
    if instance is not None:
        check_uid(instance, "SOP Instance")
