"""A real syslog collector for tests: TLS (RFC 5425) on loopback, octet-counted frames."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time

import trustme

from tests.ports import free_port

__all__ = ["Collector", "free_port"]


class Collector:
    """Accepts TLS connections (client certificates required) and keeps every message."""

    def __init__(self, ca: trustme.CA, port: int = 0) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(self.context)
        self.context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(self.context)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen()
        self.port: int = self.listener.getsockname()[1]
        self.messages: list[bytes] = []
        self.peers: list[str] = []
        self.refused_handshakes = 0
        self._condition = threading.Condition()
        self._connections: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            connection = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            with self._condition:
                self.refused_handshakes += 1
                self._condition.notify_all()
            return
        with self._condition:
            if self._closed:
                connection.close()
                return
            self._connections.append(connection)
            peer = connection.getpeercert() or {}
            names = [value for kind, value in peer.get("subjectAltName", ()) if kind == "DNS"]
            self.peers.append(",".join(names))
        buffer = b""
        try:
            while True:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while b" " in buffer:
                    length_text, rest = buffer.split(b" ", 1)
                    length = int(length_text)
                    if len(rest) < length:
                        break
                    with self._condition:
                        self.messages.append(rest[:length])
                        self._condition.notify_all()
                    buffer = rest[length:]
        except (OSError, ssl.SSLError, ValueError):
            return
        finally:
            with contextlib.suppress(OSError):
                connection.close()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[bytes]:
        """The messages once at least ``count`` arrived (fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"only {len(self.messages)} of {count} messages arrived")
                self._condition.wait(left)
            return list(self.messages)

    def wait_for_refusals(self, count: int, timeout: float = 60.0) -> None:
        """Wait until ``count`` TLS handshakes have failed."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self.refused_handshakes < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"only {self.refused_handshakes} handshakes failed")
                self._condition.wait(left)

    def close(self) -> None:
        """Stop listening and drop every connection, as a collector going down does."""
        with self._condition:
            self._closed = True
            connections, self._connections = self._connections, []
        self.listener.close()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                connection.close()
