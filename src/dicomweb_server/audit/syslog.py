"""Forwarding audit records to a syslog collector over TLS (RFC 5424 messages, RFC 5425).

The audit store is the spool: the forwarder reads the durable record files from a cursor
(file and byte offset) kept in ``<audit dir>/forward/cursor.json`` and sends what follows
it, in order. While the collector is down nothing moves the cursor, so nothing is lost and
nothing is reordered; a restarted server resumes where the cursor stands. The cursor only
advances over records sent on a connection that was still open afterwards: a connection
found closed makes the forwarder reconnect and send again from the cursor (at-least-once
delivery; a collector may see a record twice, never miss one the archive could detect as
unsent). With several server processes, one of them forwards (an ``flock`` on
``forward/lock`` elects it).

Each record is one RFC 5424 message as the DICOM profile (PS3.15 A.6) and IHE ATNA use it:
facility 10 (authpriv), severity from the event outcome, MSGID ``DICOM+RFC3881``, the
audit message XML as MSG (UTF-8 with BOM), framed by octet counting (RFC 5425 4.3).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from dicomweb_server.audit.store import audit_files

log = logging.getLogger(__name__)

DEFAULT_PORT = 6514
FACILITY_AUTHPRIV = 10
MSGID = "DICOM+RFC3881"
BOM = b"\xef\xbb\xbf"
#: Syslog severity by EventOutcomeIndicator: notice, warning, error, critical.
SEVERITY = {0: 5, 4: 4, 8: 3, 12: 2}
_PRINTABLE = re.compile(r"[^!-~]")


def _header_field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, or the nil value."""
    clean = _PRINTABLE.sub("_", value)[:limit]
    return clean or "-"


def syslog_message(record: dict[str, Any], hostname: str, app_name: str) -> bytes:
    """One audit record as an RFC 5424 message (without framing)."""
    severity = SEVERITY.get(int(record.get("outcome", 0)), 5)
    header = "<{}>1 {} {} {} - {} - ".format(
        FACILITY_AUTHPRIV * 8 + severity,
        _header_field(str(record.get("time", "")), 64),
        _header_field(hostname, 255),
        _header_field(app_name, 48),
        MSGID,
    )
    return header.encode("ascii") + BOM + str(record.get("xml", "")).encode("utf-8")


def frame(message: bytes) -> bytes:
    """Octet-counting framing (RFC 5425 4.3): ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in the record files: the next byte to forward."""

    file: str
    offset: int


def parse_target(url: str) -> tuple[str, int]:
    """Host and port of a ``tls://host:port`` collector URL."""
    parts = urlsplit(url)
    if parts.scheme != "tls" or not parts.hostname:
        raise ValueError(
            f"audit syslog URL {url!r} must look like tls://host:6514 (RFC 5425: syslog over TLS)"
        )
    return parts.hostname, parts.port or DEFAULT_PORT


def client_context(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A TLS client context that verifies the collector (and presents our certificate)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


class SyslogForwarder:
    """A background thread sending new audit records to one collector, in order."""

    def __init__(
        self,
        directory: Path,
        url: str,
        context: ssl.SSLContext,
        *,
        hostname: str | None = None,
        app_name: str = "dicomweb-server",
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        poll_interval: float = 1.0,
        batch: int = 256,
        timeout: float = 30.0,
        settle: float = 1.0,
    ) -> None:
        self.host, self.port = parse_target(url)
        self.directory = directory
        self.state_dir = directory / "forward"
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.context = context
        self.hostname = hostname or socket.gethostname()
        self.app_name = app_name
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.poll_interval = poll_interval
        self.batch = batch
        self.timeout = timeout
        self.settle = settle
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.forwarded = 0  # records sent since start (for tests and diagnostics)

    # -- control --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            if self.load_cursor() is None:
                # First time on: forward what is written from now on, not the past.
                self._save_cursor(self._cursor_at_end())
            self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
            self._thread.start()

    def notify(self) -> None:
        """New records were written: look now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    # -- cursor ---------------------------------------------------------------------------------

    @property
    def cursor_path(self) -> Path:
        return self.state_dir / "cursor.json"

    def load_cursor(self) -> Cursor | None:
        try:
            data = orjson.loads(self.cursor_path.read_bytes())
            return Cursor(str(data["file"]), int(data["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save_cursor(self, cursor: Cursor) -> None:
        temporary = self.state_dir / "cursor.json.tmp"
        data = orjson.dumps({"file": cursor.file, "offset": cursor.offset})
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.cursor_path)
        fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _cursor_at_end(self) -> Cursor:
        """Where forwarding starts when it was never on: after the records written so far."""
        files = audit_files(self.directory)
        if not files:
            return Cursor("", 0)
        last = files[-1]
        data = last.read_bytes()
        return Cursor(last.name, data.rfind(b"\n") + 1)

    def _read(self, cursor: Cursor) -> tuple[list[bytes], Cursor]:
        """Complete lines after ``cursor`` (at most one batch) and the cursor after them."""
        files = audit_files(self.directory)
        names = [path.name for path in files]
        position = cursor
        lines: list[bytes] = []
        while len(lines) < self.batch:
            if position.file not in names:
                later = [name for name in names if name > position.file]
                if not later:
                    break
                position = Cursor(later[0], 0)
            path = self.directory / position.file
            with path.open("rb") as handle:
                handle.seek(position.offset)
                while len(lines) < self.batch:
                    line = handle.readline()
                    if not line.endswith(b"\n"):
                        break  # end of file, or a line still being written
                    position = Cursor(position.file, position.offset + len(line))
                    if line.strip():
                        lines.append(line)
            if len(lines) >= self.batch:
                break
            later = [name for name in names if name > position.file]
            if not later:
                break
            # A later day's file exists: move on once this one has been quiet for a while,
            # so a record written just after midnight into it is not left behind.
            if time.time() - path.stat().st_mtime < 2 * self.poll_interval + 1:
                break
            position = Cursor(later[0], 0)
        return lines, position

    # -- connection -----------------------------------------------------------------------------

    def _connect(self) -> ssl.SSLSocket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            return self.context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise

    def _alive(self, connection: ssl.SSLSocket) -> bool:
        """Whether the collector still holds the connection open (it never sends data)."""
        try:
            readable, _, _ = select.select([connection], [], [], 0)
        except (OSError, ValueError):
            return False
        if not readable:
            return True
        connection.setblocking(False)
        try:
            return bool(connection.recv(4096))
        except ssl.SSLWantReadError:
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                connection.settimeout(self.timeout)

    def _frames(self, lines: list[bytes]) -> bytes:
        chunks = []
        for line in lines:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("not forwarding an unreadable audit line")
                continue
            chunks.append(frame(syslog_message(record, self.hostname, self.app_name)))
        return b"".join(chunks)

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        lock_path = self.state_dir / "lock"
        lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            while not self._stop.is_set():
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    self._stop.wait(self.poll_interval)  # another process forwards
            else:
                return
            self._forward()
        except Exception:
            log.exception("audit forwarding to %s:%s stopped", self.host, self.port)
        finally:
            os.close(lock_fd)

    def _forward(self) -> None:
        confirmed = self.load_cursor() or self._cursor_at_end()
        sent = confirmed
        # Positions reached by sends not yet confirmed, with when they were sent. A send is
        # confirmed once the connection is still open ``settle`` seconds later: a collector
        # that had gone away has reset the connection by then.
        pending: list[tuple[float, Cursor]] = []
        connection: ssl.SSLSocket | None = None
        delay = self.retry_initial
        try:
            while not self._stop.is_set():
                if connection is not None:
                    if not self._alive(connection):
                        # What went out since the cursor may not have arrived: send it again.
                        log.warning("the audit collector closed the connection; reconnecting")
                        connection.close()
                        connection, sent, pending = None, confirmed, []
                    else:
                        moment = time.monotonic()
                        settled = [cursor for at, cursor in pending if moment - at >= self.settle]
                        if settled:
                            confirmed = settled[-1]
                            self._save_cursor(confirmed)
                            pending = [item for item in pending if moment - item[0] < self.settle]
                lines, after = self._read(sent)
                if not lines:
                    if after != sent:  # moved past blank lines or onto the next file
                        sent = after
                        if connection is None:
                            confirmed = sent
                            self._save_cursor(confirmed)
                        else:
                            pending.append((time.monotonic(), after))
                        continue
                    timeout = self.poll_interval
                    if pending:  # wake up in time to confirm what is pending
                        due = pending[0][0] + self.settle - time.monotonic()
                        timeout = min(timeout, max(due, 0.0) + 0.01)
                    self._wake.wait(timeout)
                    self._wake.clear()
                    continue
                if connection is None:
                    try:
                        connection = self._connect()
                    except (OSError, ssl.SSLError) as exc:
                        log.warning(
                            "audit collector %s:%s unreachable (%s); retrying in %.1fs",
                            self.host,
                            self.port,
                            exc,
                            delay,
                        )
                        self._stop.wait(delay)
                        delay = min(delay * 2, self.retry_max)
                        continue
                    delay = self.retry_initial
                try:
                    connection.sendall(self._frames(lines))
                except (OSError, ssl.SSLError) as exc:
                    log.warning("sending to the audit collector failed (%s); resending", exc)
                    connection.close()
                    connection, sent, pending = None, confirmed, []
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.retry_max)
                    continue
                sent = after
                pending.append((time.monotonic(), after))
                self.forwarded += len(lines)
            if connection is not None and pending:
                # Stopping: let the last send settle, then confirm it if still connected.
                due = pending[-1][0] + self.settle - time.monotonic()
                if due > 0:
                    time.sleep(min(due, self.settle))
                if self._alive(connection):
                    self._save_cursor(pending[-1][1])
        finally:
            if connection is not None:
                with contextlib.suppress(OSError):
                    connection.close()
