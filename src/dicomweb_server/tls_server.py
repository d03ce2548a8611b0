"""Serving the archive over TLS, with HTTP/2 and HTTP/1.1, on Hypercorn.

``dicomweb-server serve --certfile --keyfile`` lands here. Uvicorn speaks only HTTP/1.1, so
TLS serving uses Hypercorn, whose HTTP/2 (h2) support is mature; ALPN picks HTTP/2 or
HTTP/1.1 per connection. Plain HTTP stays on uvicorn, which is faster for HTTP/1.1 (see
docs/deployment-tls.md for the measurements).

Workers are supervised here rather than by ``hypercorn.run``: its supervisor terminates
the remaining workers as soon as the first one has stopped, which cuts their graceful
shutdown short, and it sets a multiprocessing event from inside a signal handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypercorn.config import Config, Sockets

if TYPE_CHECKING:
    from dicomweb_server.settings import Settings

log = logging.getLogger("dicomweb_server")

#: RFC 9113 section 9.2: HTTP/2 over TLS needs TLS 1.2 or newer.
MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2
#: Offered in this order by ALPN: HTTP/2 first, HTTP/1.1 for older clients.
ALPN_PROTOCOLS = ["h2", "http/1.1"]
#: TLS 1.2 cipher suites: forward-secret AEAD only (Mozilla "intermediate"), none of which
#: is on the HTTP/2 deny list (RFC 9113 appendix A). TLS 1.3 suites are OpenSSL's defaults.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"
#: HTTP/2 receive windows, stream and connection. With the protocol's default of 64 KiB an
#: upload is held to 64 KiB per round trip (3 MiB/s at 20 ms); even on loopback a 32 MiB
#: STOW from curl went from 70-95 to 105-175 MB/s with these. Memory stays bounded:
#: Hypercorn stops reading a connection while the app has not taken what it was given.
H2_STREAM_WINDOW = 1024 * 1024
H2_CONNECTION_WINDOW = 4 * 1024 * 1024
#: Seconds to wait for a client's TLS close_notify when closing its connection (asyncio's
#: default, 30, holds up a graceful stop by that long for every idle keep-alive client).
TLS_SHUTDOWN_TIMEOUT = 5.0
#: Seconds a worker that stops by itself must have run to be restarted (not a start failure).
_MIN_WORKER_LIFETIME = 10.0


class TLSConfigError(ValueError):
    """The certificate, key or CA file cannot be used."""


@dataclass(frozen=True)
class TLSFiles:
    """Where the server's certificate chain and key are, and the optional client CAs."""

    certfile: Path
    keyfile: Path
    #: When set, clients must present a certificate issued by one of these CAs (mutual TLS).
    ca_certs: Path | None = None


def server_ssl_context(files: TLSFiles) -> ssl.SSLContext:
    """The server-side TLS context: TLS 1.2+, AEAD ciphers, ALPN h2 and http/1.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_TLS_VERSION
    context.set_ciphers(TLS12_CIPHERS)
    # RFC 9113 section 9.2.1: no TLS compression and no renegotiation under HTTP/2.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    try:
        context.load_cert_chain(certfile=files.certfile, keyfile=files.keyfile)
    except (OSError, ssl.SSLError) as error:
        raise TLSConfigError(
            f"cannot load the certificate {files.certfile} with the key {files.keyfile}: {error}"
        ) from error
    if files.ca_certs is not None:
        try:
            context.load_verify_locations(cafile=files.ca_certs)
        except (OSError, ssl.SSLError) as error:
            raise TLSConfigError(f"cannot load the CA file {files.ca_certs}: {error}") from error
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def resolve_tls_files(
    certfile: str | None, keyfile: str | None, ca_certs: str | None, settings: Settings
) -> TLSFiles | None:
    """The TLS files from serve's options, else the settings; None for plain HTTP.

    Raises ``TLSConfigError`` when only one of certificate and key is given, or when the
    files cannot be loaded, so that ``serve`` stops with a clear message before starting.
    """
    cert = Path(certfile) if certfile else settings.tls_certfile
    key = Path(keyfile) if keyfile else settings.tls_keyfile
    cas = Path(ca_certs) if ca_certs else settings.tls_ca_certs
    if cert is None and key is None:
        if cas is not None:
            raise TLSConfigError(
                "--ca-certs (DICOMWEB_TLS_CA_CERTS) needs TLS: give --certfile and --keyfile"
            )
        return None
    if cert is None or key is None:
        missing = (
            "--keyfile (DICOMWEB_TLS_KEYFILE)"
            if key is None
            else "--certfile (DICOMWEB_TLS_CERTFILE)"
        )
        raise TLSConfigError(f"TLS needs both a certificate and its key: {missing} is missing")
    files = TLSFiles(certfile=cert, keyfile=key, ca_certs=cas)
    server_ssl_context(files)
    return files


class _TLSConfig(Config):
    """Hypercorn's configuration, with the archive's TLS context.

    At module level so that it pickles to the spawned worker processes.
    """

    tls_files: TLSFiles | None = None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return None if self.tls_files is None else server_ssl_context(self.tls_files)


def hypercorn_config(
    tls: TLSFiles, *, host: str, port: int, log_level: str, access_log: bool, workers: int
) -> Config:
    """The Hypercorn configuration that ``serve_tls`` runs with."""
    config = _TLSConfig()
    config.tls_files = tls
    # Hypercorn turns TLS on when both are set; the context itself comes from tls_files.
    config.certfile = str(tls.certfile)
    config.keyfile = str(tls.keyfile)
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.workers = workers
    config.loglevel = "DEBUG" if log_level.lower() == "trace" else log_level.upper()
    config.accesslog = "-" if access_log else None
    config.errorlog = "-"
    config.backlog = 2048  # as uvicorn
    config.graceful_timeout = 30.0  # as uvicorn's timeout_graceful_shutdown in cmd_serve
    config.ssl_handshake_timeout = 20.0
    # Hypercorn ends a connection after 1000 requests (HTTP/2: GOAWAY), and clients that
    # multiplex many requests on it (httpx, some viewers) then fail the ones in flight.
    # uvicorn sets no such limit either.
    config.keep_alive_max_requests = 2**31
    return config


def serve_tls(
    tls: TLSFiles,
    *,
    host: str,
    port: int,
    workers: int = 1,
    log_level: str = "info",
    access_log: bool = True,
) -> int:
    """Serve ``app_from_environment`` over TLS until SIGTERM or SIGINT; the exit code."""
    server_ssl_context(tls)  # fail here, with a clear message, rather than in every worker
    config = hypercorn_config(
        tls, host=host, port=port, log_level=log_level, access_log=access_log, workers=workers
    )
    sockets = config.create_sockets()
    try:
        if workers <= 1:
            _worker(config, sockets, None)
            return 0
        return _supervise(config, sockets, workers)
    finally:
        for sock in sockets.secure_sockets:
            sock.close()


def _supervise(config: Config, sockets: Sockets, workers: int) -> int:
    """Run ``workers`` worker processes on the shared sockets, restarting any that die."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    stopping = False

    def on_signal(signum: int, _frame: Any) -> None:
        # Only a flag here: setting the multiprocessing event takes a lock that the main
        # thread may hold at this moment.
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    started: dict[multiprocessing.process.BaseProcess, float] = {}

    def spawn() -> None:
        process = context.Process(
            target=_worker,
            kwargs={"config": config, "sockets": sockets, "stop": stop},
            name="dicomweb-server-worker",
            daemon=False,
        )
        process.start()
        started[process] = time.monotonic()

    exit_code = 0
    try:
        for _ in range(workers):
            spawn()
        while not stopping:
            ended = multiprocessing.connection.wait(
                [process.sentinel for process in started], timeout=0.5
            )
            for process in [p for p in started if p.sentinel in ended]:
                process.join()
                lifetime = time.monotonic() - started.pop(process)
                if stopping:
                    break
                if lifetime < _MIN_WORKER_LIFETIME:
                    log.error("a worker failed at start (exit code %s)", process.exitcode)
                    exit_code, stopping = 1, True
                else:
                    log.warning(
                        "a worker stopped (exit code %s): starting another", process.exitcode
                    )
                    spawn()
    finally:
        stop.set()
        deadline = time.monotonic() + config.graceful_timeout + config.shutdown_timeout
        for process in started:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_code


def _worker(config: Config, sockets: Sockets, stop: EventType | None) -> None:
    """One server process: the app on the shared sockets until told to stop."""
    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.asyncio.run import worker_serve

    from dicomweb_server.app import app_from_environment

    if stop is not None and not logging.getLogger().handlers:  # a spawned process
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _use_wide_h2_windows()
    config.log  # noqa: B018 - builds Hypercorn's loggers in this process, then:
    logging.getLogger("hypercorn.error").propagate = False  # not twice through the root logger
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    # As under uvicorn: X-Forwarded-For/-Proto count only from FORWARDED_ALLOW_IPS (default
    # loopback), so a request's client address (audit trail) means the same in both modes.
    asgi_app: Any = app_from_environment()  # ASGI; the servers' own types are narrower
    framework: Any = ProxyHeadersMiddleware(
        asgi_app,
        trusted_hosts=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1"),
    )
    app = ASGIWrapper(framework)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_handshake_errors)
        signalled = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signalled.set)

        async def shutdown_trigger() -> None:
            while not signalled.is_set() and not (stop is not None and stop.is_set()):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(signalled.wait(), 0.2)

        await worker_serve(app, config, sockets=sockets, shutdown_trigger=shutdown_trigger)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop (as uvicorn uses) where installed, with a shorter TLS shutdown timeout.

    Hypercorn does not pass ``ssl_shutdown_timeout`` to ``start_server``; the loop fills it in.
    """
    base: Any
    try:
        import uvloop

        base = uvloop.Loop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        base = asyncio.SelectorEventLoop

    class Loop(base):  # type: ignore[misc]
        async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_shutdown_timeout", TLS_SHUTDOWN_TIMEOUT)
            server: asyncio.Server = await super().create_server(*args, **kwargs)
            return server

    return Loop


def _use_wide_h2_windows() -> None:
    """Make Hypercorn's HTTP/2 connections advertise the larger receive windows.

    Hypercorn has no setting for them; its connection wrapper builds ``H2Protocol`` by the
    name in ``hypercorn.protocol``, so a subclass there takes effect (in this process only).
    """
    import h2.settings
    import hypercorn.protocol
    from hypercorn.protocol.h2 import H2Protocol

    if getattr(hypercorn.protocol, "H2Protocol", None) is not H2Protocol:
        return  # already done, or Hypercorn changed: then it keeps the default windows

    class WideWindowH2Protocol(H2Protocol):
        async def initiate(
            self, headers: list[tuple[bytes, bytes]] | None = None, settings: bytes | None = None
        ) -> None:
            values: dict[Any, int] = dict(self.connection.local_settings.items())
            values[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = H2_STREAM_WINDOW
            self.connection.local_settings = h2.settings.Settings(
                client=False, initial_values=values
            )
            await super().initiate(headers, settings)
            increment = H2_CONNECTION_WINDOW - self.connection.inbound_flow_control_window
            if increment > 0:
                self.connection.increment_flow_control_window(increment)
                await self._flush()

    setattr(hypercorn.protocol, "H2Protocol", WideWindowH2Protocol)  # noqa: B010


def _quiet_handshake_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # A client that fails the handshake (old TLS version, plain HTTP, untrusted certificate)
    # or does not answer the TLS close (TimeoutError) is the client's problem, not a server
    # error worth a traceback.
    error = context.get("exception")
    if isinstance(error, ssl.SSLError):
        return
    if isinstance(error, TimeoutError | ConnectionError) and "client_connected_cb" in str(
        context.get("message", "")
    ):
        log.debug("client connection closed uncleanly: %r", error)
        return
    loop.default_exception_handler(context)
