"""The audit trail: DICOM audit messages (PS3.15 A.5) for every request that touches patient
data, written durably before the response, optionally forwarded to syslog over TLS.

- `messages`: the audit message model and the XML of the DICOM Audit Message Schema;
- `store`: the append-only, group-flushed record files under ``<data dir>/audit``;
- `syslog`: RFC 5424 / RFC 5425 forwarding with the record files as spool;
- `trail`: one process's trail (store, forwarder, the archive as a participant);
- `middleware`: per-request records, and the hooks for refused requests
  (`record_auth_failure` for 401, `record_forbidden` for 403).

See docs/audit.md.
"""

from __future__ import annotations

from dicomweb_server.audit.middleware import (
    AuditMiddleware,
    record_auth_failure,
    record_forbidden,
    report_refs,
    report_store,
)
from dicomweb_server.audit.trail import AuditTrail

__all__ = [
    "AuditMiddleware",
    "AuditTrail",
    "record_auth_failure",
    "record_forbidden",
    "report_refs",
    "report_store",
]
