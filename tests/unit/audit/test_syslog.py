"""Forwarding to a real TLS syslog collector: format, order, and nothing lost while it is down."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme
from lxml import etree

from dicomweb_server.audit import messages
from dicomweb_server.audit.messages import ActiveParticipant
from dicomweb_server.audit.store import AuditStore, audit_files
from dicomweb_server.audit.syslog import (
    SyslogForwarder,
    client_context,
    frame,
    parse_target,
    syslog_message,
)
from dicomweb_server.audit.trail import AuditRecord, Caller
from tests.audit_schema import validate
from tests.unit.audit.syslog_collector import Collector, free_port

HEADER = re.compile(
    rb"^<(?P<pri>\d+)>1 (?P<time>\S+) (?P<host>\S+) dicomweb-server - DICOM\+RFC3881 - \xef\xbb\xbf"
)


def record(n: int, outcome: int = messages.SUCCESS) -> bytes:
    message = messages.query(
        outcome=outcome,
        time=datetime.now(UTC),
        source_id="archive",
        requestor=ActiveParticipant(user_id="alice", requestor=True),
        responder=ActiveParticipant(user_id="https://pacs/dicom-web", requestor=False),
        resource="https://pacs/dicom-web/studies",
        query_string=f"n={n}".encode(),
    )
    return AuditRecord(message, Caller(subject="alice")).line()


def number(message: bytes) -> int:
    """Which record a syslog message carries (its query is ``n=<number>``)."""
    match = HEADER.match(message)
    assert match, message[:120]
    root = validate(message[match.end() :].decode("utf-8"))
    query = root.findtext(".//ParticipantObjectQuery") or ""
    return int(base64.b64decode(query).decode().split("=")[1])


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # The archive's client certificate, with its key in the same file.
    client = tmp_path / "client.pem"
    ca.issue_cert("archive.example.org").private_key_and_cert_chain_pem.write_to_path(str(client))
    return ca_file, client


@pytest.fixture
def trail_dir(tmp_path: Path) -> Iterator[tuple[Path, AuditStore]]:
    directory = tmp_path / "audit"
    store = AuditStore(directory)
    yield directory, store
    store.close()


def forwarder(directory: Path, port: int, tls_files: tuple[Path, Path]) -> SyslogForwarder:
    ca_file, client = tls_files
    return SyslogForwarder(
        directory,
        f"tls://127.0.0.1:{port}",
        client_context(ca_file, client),
        hostname="archive-host",
        retry_initial=0.05,
        retry_max=0.2,
        poll_interval=0.05,
        batch=7,
        settle=0.3,
    )


def test_messages_are_rfc5424_with_the_audit_xml(
    ca: trustme.CA, tls_files: tuple[Path, Path], trail_dir: tuple[Path, AuditStore]
) -> None:
    directory, store = trail_dir
    collector = Collector(ca)
    sender = forwarder(directory, collector.port, tls_files)
    sender.start()
    try:
        store.on_written(sender.notify)
        store.append_sync([record(1), record(2, messages.MINOR_FAILURE)])
        first, second = collector.wait_for(2)
    finally:
        sender.stop()
        collector.close()
    match = HEADER.match(first)
    assert match
    assert match["pri"] == b"85"  # facility 10 (authpriv), severity 5 (notice)
    assert match["host"] == b"archive-host"
    datetime.fromisoformat(match["time"].decode())
    assert HEADER.match(second)["pri"] == b"84"  # type: ignore[index]  # minor failure: warning
    assert [number(first), number(second)] == [1, 2]
    assert collector.peers == ["archive.example.org"]  # mutual TLS: the archive was verified


def test_collector_down_records_wait_then_arrive_in_order(
    ca: trustme.CA, tls_files: tuple[Path, Path], trail_dir: tuple[Path, AuditStore]
) -> None:
    directory, store = trail_dir
    port = free_port()
    sender = forwarder(directory, port, tls_files)
    sender.start()
    store.on_written(sender.notify)
    try:
        for n in range(1, 31):
            store.append_sync([record(n)])
        # Nobody listens: nothing was forwarded, the cursor has not moved.
        assert sender.forwarded == 0
        cursor = sender.load_cursor()
        assert cursor is not None and cursor.offset == 0
        collector = Collector(ca, port)
        try:
            received = collector.wait_for(30)
        finally:
            collector.close()
    finally:
        sender.stop()
    assert [number(message) for message in received] == list(range(1, 31))


def test_a_collector_restart_loses_nothing(
    ca: trustme.CA, tls_files: tuple[Path, Path], trail_dir: tuple[Path, AuditStore]
) -> None:
    directory, store = trail_dir
    first = Collector(ca, free_port())
    port = first.port
    sender = forwarder(directory, port, tls_files)
    sender.start()
    store.on_written(sender.notify)
    try:
        for n in range(1, 21):
            store.append_sync([record(n)])
        before = first.wait_for(20)
        first.close()
        for n in range(21, 41):
            store.append_sync([record(n)])
        second = Collector(ca, port)
        try:
            after = second.wait_for(1)
            while 40 not in {number(message) for message in after}:
                after = second.wait_for(len(after) + 1)
        finally:
            second.close()
    finally:
        sender.stop()
    seen = [number(message) for message in before + after]
    # At least once, in order: every record arrived, and the first arrival of each is in
    # the order they were written (a record sent just before the drop may come twice).
    first_seen = list(dict.fromkeys(seen))
    assert first_seen == list(range(1, 41))


def test_forwarding_resumes_from_the_cursor(
    ca: trustme.CA, tls_files: tuple[Path, Path], trail_dir: tuple[Path, AuditStore]
) -> None:
    directory, store = trail_dir
    collector = Collector(ca)
    try:
        sender = forwarder(directory, collector.port, tls_files)
        sender.start()
        store.on_written(sender.notify)
        for n in range(1, 11):
            store.append_sync([record(n)])
        collector.wait_for(10)
        sender.stop()
        [path] = audit_files(directory)
        cursor = sender.load_cursor()
        assert cursor is not None and (cursor.file, cursor.offset) == (
            path.name,
            path.stat().st_size,
        )
        # Written while no server forwards (e.g. the archive was restarted).
        for n in range(11, 21):
            store.append_sync([record(n)])
        again = forwarder(directory, collector.port, tls_files)
        again.start()
        try:
            received = collector.wait_for(20)
        finally:
            again.stop()
    finally:
        collector.close()
    assert [number(message) for message in received] == list(range(1, 21))


def test_forwarding_starts_after_the_records_already_there(
    ca: trustme.CA, tls_files: tuple[Path, Path], trail_dir: tuple[Path, AuditStore]
) -> None:
    directory, store = trail_dir
    store.append_sync([record(1), record(2)])
    collector = Collector(ca)
    sender = forwarder(directory, collector.port, tls_files)
    sender.start()
    store.on_written(sender.notify)
    try:
        store.append_sync([record(3)])
        received = collector.wait_for(1)
    finally:
        sender.stop()
        collector.close()
    assert [number(message) for message in received] == [3]


def test_an_untrusted_collector_gets_nothing(
    tls_files: tuple[Path, Path], trail_dir: tuple[Path, AuditStore]
) -> None:
    directory, store = trail_dir
    impostor = Collector(trustme.CA())  # a certificate our CA did not issue
    sender = forwarder(directory, impostor.port, tls_files)
    sender.start()
    try:
        store.append_sync([record(1)])
        sender.notify()
        # The forwarder refuses the impostor's certificate, and tries again later.
        impostor.wait_for_refusals(2)
        assert impostor.messages == []
    finally:
        sender.stop()
        impostor.close()
    cursor = sender.load_cursor()
    assert cursor is not None and cursor.offset == 0


def test_framing_and_header_fields() -> None:
    message = syslog_message(
        {"time": "2024-05-01T12:00:00.5+00:00", "outcome": 8, "xml": "<AuditMessage/>"},
        "host with space",
        "dicomweb-server",
    )
    assert message.startswith(b"<83>1 2024-05-01T12:00:00.5+00:00 host_with_space ")
    assert message.endswith(b"\xef\xbb\xbf<AuditMessage/>")
    assert frame(b"abc") == b"3 abc"
    assert frame("é".encode()) == b"2 \xc3\xa9"  # octets, not characters


def test_only_tls_collectors() -> None:
    assert parse_target("tls://collector.example.org") == ("collector.example.org", 6514)
    assert parse_target("tls://10.0.0.1:1514") == ("10.0.0.1", 1514)
    for url in ("udp://collector:514", "tcp://collector:601", "collector:6514"):
        with pytest.raises(ValueError, match="tls://"):
            parse_target(url)


def test_received_xml_is_the_stored_xml(trail_dir: tuple[Path, AuditStore]) -> None:
    # A unit check that the MSG part is byte for byte the stored message.
    import orjson

    stored = orjson.loads(record(7))
    body = syslog_message(stored, "h", "dicomweb-server").split(b"\xef\xbb\xbf", 1)[1]
    assert body.decode() == stored["xml"]
    assert etree.fromstring(body).tag == "AuditMessage"
