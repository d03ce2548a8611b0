"""A connection handed to a worker that is then told to stop is still answered.

The supervisor passes each accepted connection to a worker over a socket pair. A worker that
is retired (SIGHUP, SIGTTOU) may not yet have taken a connection handed to it just before,
when its event loop was busy: it must still take it and answer its request, not drop it as
it stops.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from dicomweb_server.worker_pool import CONNECTION, READY, HandOffServer
from tests.worker_pools import start_pool

#: Answers with its pid; ``/block`` holds the worker's event loop until a file named
#: "release" appears beside the app, as a long synchronous step would.
BLOCKING_APP = """
import os, pathlib, time
RELEASE = pathlib.Path(__file__).with_name("release")

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()
    if scope["path"] == "/block":
        while not RELEASE.exists():
            time.sleep(0.02)
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


def _pid(url: str, timeout: float = 10) -> str:
    return httpx.get(url, headers={"Connection": "close"}, timeout=timeout).text


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_a_connection_handed_to_a_retired_busy_worker_is_answered(tmp_path: Path) -> None:
    pool, port = start_pool(tmp_path, "blocking_app", BLOCKING_APP, 1)
    url = f"http://127.0.0.1:{port}/"
    late: socket.socket | None = None
    try:
        deadline = time.monotonic() + 60
        old = ""
        while not old and time.monotonic() < deadline:
            try:
                old = _pid(url)
            except httpx.HTTPError:
                time.sleep(0.2)
        assert old

        # The only worker's event loop is held by a request...
        blocked: list[httpx.Response] = []
        holder = threading.Thread(
            target=lambda: blocked.append(httpx.get(url + "block", timeout=60))
        )
        holder.start()
        time.sleep(0.5)
        # ...when another connection is handed to it: it cannot take it yet.
        late = socket.create_connection(("127.0.0.1", port), timeout=60)
        late.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        time.sleep(0.5)

        # A new worker replaces it; the old one is told to stop while still busy.
        pool.send_signal(signal.SIGHUP)
        new = old
        while new == old and time.monotonic() < deadline:
            try:
                # Answered by the new worker once the old one was retired; until then a probe
                # may be handed to the old one, which answers it only once released.
                new = _pid(url, timeout=1)
            except httpx.HTTPError:
                time.sleep(0.2)
        assert new != old
        assert holder.is_alive() and not blocked  # the old worker is still held

        (tmp_path / "release").touch()
        holder.join(30)
        assert blocked and blocked[0].status_code == 200 and blocked[0].text == old
        answer = _read_response(late)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert answer.endswith(old.encode())  # served by the worker it was handed to
        # ...which stops: it closes the connection after the answer instead of keeping it.
        assert b"\r\nconnection: close\r\n" in answer.lower()
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(30) == 0
    finally:
        if late is not None:
            late.close()
        pool.kill()
        pool.wait()


async def _pid_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    body = str(os.getpid()).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_connection_still_in_the_channel_when_the_worker_stops_is_answered(http: str) -> None:
    """The narrowest case: the descriptor is in the channel, unread, when shutdown begins
    (the supervisor handed it over in the same event-loop turn that saw the stop)."""
    config = uvicorn.Config(_pid_app, lifespan="off", log_level="error", http=http)
    config.load()
    supervisor_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=10)
    accepted, _ = listener.accept()
    client.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")

    async def run() -> None:
        server = HandOffServer(config, worker_end)
        server.lifespan = config.lifespan_class(config)
        await server.startup()
        assert supervisor_end.recv(16) == READY
        # Handed over and told to stop with no turn of the event loop in between.
        socket.send_fds(supervisor_end, [CONNECTION], [accepted.fileno()])
        accepted.close()
        server.should_exit = True
        await server.shutdown()

    try:
        asyncio.run(run())
        answer = _read_response(client)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert answer.endswith(str(os.getpid()).encode())
        # Then the connection closed (the read above ended); uvicorn's httptools protocol
        # says so in the answer, its h11 protocol closes without saying.
        if http == "httptools":
            assert b"\r\nconnection: close\r\n" in answer.lower()
    finally:
        for sock in (client, listener, supervisor_end, worker_end):
            sock.close()
