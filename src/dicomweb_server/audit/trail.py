"""The audit trail of one server process: durable store, optional syslog forwarding."""

from __future__ import annotations

import getpass
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from dicomweb_server import __version__
from dicomweb_server.audit import messages
from dicomweb_server.audit.messages import ActiveParticipant, AuditMessage
from dicomweb_server.audit.store import AuditStore
from dicomweb_server.audit.syslog import SyslogForwarder, client_context
from dicomweb_server.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "dicomweb-server"


def audit_directory(settings: Settings) -> Path:
    """Where the audit trail lives: ``DICOMWEB_AUDIT_DIR`` or ``<data dir>/audit``."""
    return (settings.audit_dir or settings.data_dir / "audit").resolve()


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request, as the audit trail names them (never the token itself)."""

    subject: str
    issuer: str | None = None
    token_id: str | None = None
    client_id: str | None = None
    address: str | None = None

    def participant(self, *, requestor: bool = True) -> ActiveParticipant:
        """UserID is the token's ``sub``; AlternativeUserID ``sub@iss`` (A.5.2.2: the
        identity used for authentication, like a Kerberos user@realm)."""
        return ActiveParticipant(
            user_id=self.subject,
            requestor=requestor,
            alternative_user_id=f"{self.subject}@{self.issuer}" if self.issuer else None,
            network_access_point=self.address,
        )


@dataclass
class AuditRecord:
    """One stored record: the audit message and the fields the trail is searched by."""

    message: AuditMessage
    caller: Caller | None = None
    method: str | None = None
    path: str | None = None
    status: int | None = None
    patients: list[str] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)
    query: str | None = None

    def to_json(self) -> dict[str, Any]:
        caller = self.caller
        return {
            "id": uuid.uuid4().hex,
            "time": self.message.time.isoformat(),
            "event": self.message.event.code,
            "event_name": self.message.event.meaning,
            "action": self.message.action,
            "outcome": self.message.outcome,
            "user": caller.subject if caller else None,
            "issuer": caller.issuer if caller else None,
            "jti": caller.token_id if caller else None,
            "client_id": caller.client_id if caller else None,
            "client": caller.address if caller else None,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "patients": self.patients,
            "studies": self.studies,
            "query": self.query,
            "xml": self.message.to_xml(),
        }

    def line(self) -> bytes:
        return orjson.dumps(self.to_json()) + b"\n"


class AuditTrail:
    """Writes records durably and hands them to the syslog forwarder when configured."""

    def __init__(self, settings: Settings, directory: Path | None = None) -> None:
        self.settings = settings
        self.directory = directory or audit_directory(settings)
        self.hostname = socket.gethostname()
        self.source_id = settings.audit_source_id or self.hostname
        self.store = AuditStore(self.directory)
        self.forwarder: SyslogForwarder | None = None
        if settings.audit_syslog_url:
            context = client_context(
                settings.audit_syslog_ca_file,
                settings.audit_syslog_cert_file,
                settings.audit_syslog_key_file,
            )
            self.forwarder = SyslogForwarder(
                self.directory,
                settings.audit_syslog_url,
                context,
                hostname=self.hostname,
                app_name=APP_NAME,
            )
            self.store.on_written(self.forwarder.notify)
            self.forwarder.start()

    @property
    def available(self) -> bool:
        return self.store.available

    async def record(self, records: Sequence[AuditRecord]) -> None:
        """Write records durably (raises `AuditUnavailable` when it cannot)."""
        await self.store.append([record.line() for record in records])

    def record_sync(self, records: Sequence[AuditRecord]) -> None:
        self.store.append_sync([record.line() for record in records])

    # -- the archive as a participant -----------------------------------------------------------

    def archive(self, url: str | None = None) -> ActiveParticipant:
        """The archive process: UserID its DICOMweb root URL (A.5.2.1: a web service
        end-point), UserName the process name."""
        return ActiveParticipant(
            user_id=url or self.settings.public_base_url or f"{APP_NAME}@{self.hostname}",
            requestor=False,
            user_name=APP_NAME,
        )

    def application_activity(self, *, start: bool) -> None:
        """Record the server starting or stopping (A.5.3.1), durably, in this thread."""
        try:
            launcher_name = getpass.getuser()
        except (KeyError, OSError):
            launcher_name = str(os.getuid())
        application = ActiveParticipant(
            user_id=self.settings.public_base_url or f"{APP_NAME}@{self.hostname}",
            requestor=False,
            alternative_user_id=None,
            user_name=f"{APP_NAME} {__version__} (pid {os.getpid()})",
        )
        launcher = ActiveParticipant(
            user_id=f"{launcher_name}@{self.hostname}", requestor=True, user_name=launcher_name
        )
        message = messages.application_activity(
            start=start,
            time=now(),
            source_id=self.source_id,
            application=application,
            launcher=launcher,
        )
        self.record_sync([AuditRecord(message, Caller(subject=launcher.user_id))])

    def close(self) -> None:
        self.store.close()
        if self.forwarder is not None:
            self.forwarder.stop()
