"""``dicomweb-server audit``: list audit records as JSON lines, recording the reading first.

On the command line "needs admin" means file-system access to the audit folder: whoever can
read it can read the trail, so the command records the reading (110101 "Audit Log Used",
with the operating-system user and the filters) before it prints anything, and refuses to
print when it cannot record.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import TextIO

from dicomweb_server.audit import messages
from dicomweb_server.audit.messages import ActiveParticipant
from dicomweb_server.audit.store import AuditFilter, AuditUnavailable, iter_lines, parse_time
from dicomweb_server.audit.trail import APP_NAME, AuditRecord, AuditTrail, Caller, now
from dicomweb_server.settings import Settings


def criteria_of(args: argparse.Namespace) -> AuditFilter:
    return AuditFilter(
        user=args.user,
        patient=args.patient,
        study=args.study,
        event=args.event,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
    )


def operator_record(trail: AuditTrail, criteria: AuditFilter) -> AuditRecord:
    """110101 for a reading from the command line: the person and the process."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = str(os.getuid())
    person = ActiveParticipant(user_id=f"{login}@{trail.hostname}", requestor=True, user_name=login)
    process = ActiveParticipant(
        user_id=f"{APP_NAME}@{trail.hostname}",
        requestor=False,
        user_name=f"{APP_NAME} audit (pid {os.getpid()})",
    )
    filters = criteria.as_query()
    message = messages.audit_log_used(
        outcome=messages.SUCCESS,
        time=now(),
        source_id=trail.source_id,
        participants=(person, process),
        log_uri=trail.directory.as_uri(),
        filters=filters.encode() if filters else None,
    )
    return AuditRecord(message, caller=Caller(subject=person.user_id), query=filters or None)


def list_records(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    try:
        criteria = criteria_of(args)
    except ValueError as exc:
        print(f"error: --since/--until must be ISO 8601 times: {exc}", file=sys.stderr)
        return 2
    if not settings.data_dir.is_dir():
        print(f"error: no data folder at {settings.data_dir}", file=sys.stderr)
        return 2
    trail = AuditTrail(settings.model_copy(update={"audit_syslog_url": None}))
    try:
        trail.record_sync([operator_record(trail, criteria)])
    except AuditUnavailable as exc:
        print(f"error: cannot record this reading of the audit trail: {exc}", file=sys.stderr)
        return 1
    finally:
        trail.close()
    for line in iter_lines(trail.directory, criteria):
        out.write(line.decode("utf-8"))
    out.flush()
    return 0
