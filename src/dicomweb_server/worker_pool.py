"""Several uvicorn workers behind one port, each connection handed to the least busy worker.

Why not uvicorn's own supervisor: there every worker accepts from one shared socket, and the
first event loop to wake accepts every connection waiting. A gateway or viewer that opens a
few keep-alive connections at once lands them all on one worker and never leaves it: in a
1,000,000-instance ingest all four client connections went to one of two workers (108% of a
core against 2%), and a test of four connections found them all on one worker in two runs of
six. ``SO_REUSEPORT`` would spread connections by a hash of their addresses, which with a
handful of connections is just as lopsided.

So the supervisor accepts, and passes each connection's descriptor (``SCM_RIGHTS`` over a
socket pair) to the ready worker with the fewest open connections. A worker tells the
supervisor when it is ready (a starting or restarted worker gets no connection before it can
serve one) and when each connection closes. The bytes of a connection never pass through the
supervisor: after the hand-off the worker owns the socket.

A worker's event loop also says it is alive once a second. One that has gone quiet for a few
seconds (stopped, or its event loop blocked by a bug) is handed no new connection; one quiet
for the worker time-out is killed and replaced, as a dead one is: a hung worker would
otherwise hold its connections, and any handed to it, unanswered for good.

This module imports neither the archive nor the application: the supervisor only starts,
watches and feeds its workers, and stays small (see ``cli._prepare_apart``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess

import uvicorn
from uvicorn.config import STARTUP_FAILURE

log = logging.getLogger("dicomweb_server")

#: Worker -> supervisor: start-up finished, connections welcome.
READY = b"R"
#: Worker -> supervisor: one handed-over connection has closed.
CLOSED = b"C"
#: Worker -> supervisor: the event loop is turning (sent once a second).
HEARTBEAT = b"H"
#: Supervisor -> worker: the byte that carries one descriptor.
CONNECTION = b"F"

#: uvicorn's main loop ticks ten times a second; a heartbeat goes with every tenth tick.
_HEARTBEAT_TICKS = 10
#: A worker silent this long gets no new connection while others answer (at most half the
#: worker time-out).
_QUIET_AFTER = 5.0

#: How often the supervisor looks for workers that died.
_WATCH_INTERVAL = 0.5
#: Connections accepted per wake-up, so that worker messages are read in between.
_ACCEPT_BATCH = 64
#: How long a stopping worker waits for the first request of a connection handed to it
#: just before it was told to stop (the client sends it at once; this only bounds a silent one).
_FIRST_REQUEST_GRACE = 2.0


@dataclass
class _Worker:
    """The supervisor's view of one worker process."""

    process: BaseProcess
    channel: socket.socket
    open: int = 0
    ready: bool = False
    #: Ever ready: ``ready`` goes back to False when the worker stops talking.
    served: bool = False
    retiring: bool = False
    #: When the worker last said anything (monotonic clock).
    heard: float = field(default_factory=time.monotonic)


def _worker_main(config: uvicorn.Config, channel: socket.socket) -> None:
    """Entry point of a worker process (spawned: it imports what it serves itself)."""
    config.configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        HandOffServer(config, channel).run()


class HandOffServer(uvicorn.Server):
    """A uvicorn server fed with accepted connections by its supervisor instead of a socket."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket) -> None:
        super().__init__(config)
        self._channel = channel
        self._unsent = b""
        self._tasks: set[asyncio.Task[None]] = set()
        self._receiving = False
        self._protocol_class: type | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # An empty list: uvicorn's start-up without a listening socket of its own.
        await super().startup(sockets=[])
        self._protocol_class = _closing_reporter(self.config.http_protocol_class, self._closed)
        loop = asyncio.get_running_loop()
        self._channel.setblocking(False)
        loop.add_reader(self._channel.fileno(), self._receive)
        self._receiving = True
        self._tell(READY)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Connections the supervisor handed over before it said stop are this worker's to
        # answer: take any still in the channel, and have each made before uvicorn asks
        # every connection to finish (one that is waiting for its first request answers
        # it, then closes: see _closing_reporter).
        if self._receiving:
            self._receive()
        self._stop_receiving()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=_FIRST_REQUEST_GRACE)
        await super().shutdown(sockets=[])
        self._channel.close()

    async def on_tick(self, counter: int) -> bool:
        # Ticks run on the event loop: when they stop, so do the heartbeats.
        if counter % _HEARTBEAT_TICKS == 0 and self._receiving:
            self._tell(HEARTBEAT)
        return await super().on_tick(counter)

    def _stop_receiving(self) -> None:
        if self._receiving:
            asyncio.get_running_loop().remove_reader(self._channel.fileno())
            self._receiving = False

    def _tell(self, message: bytes) -> None:
        """Send a message to the supervisor without ever blocking the event loop.

        Messages are one byte each and the supervisor reads them as they come, so the
        channel's buffer does not fill; should it, the rest goes with the next message.
        """
        pending = self._unsent + message
        try:
            sent = self._channel.send(pending)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return  # the supervisor is gone; _receive ends this worker
        self._unsent = pending[sent:]

    def _receive(self) -> None:
        while True:
            try:
                data, descriptors, _flags, _address = socket.recv_fds(self._channel, 1024, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, descriptors = b"", []
            if not data and not descriptors:
                # The supervisor is gone: nobody will hand over or count connections. (When
                # it stops the pool it signals first, so an orderly stop says nothing here.)
                if not self.should_exit:
                    log.warning("worker %d: supervisor gone, shutting down", os.getpid())
                self._stop_receiving()
                self.should_exit = True
                return
            for descriptor in descriptors:
                connection = socket.socket(fileno=descriptor)
                task = asyncio.get_running_loop().create_task(self._serve_connection(connection))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _protocol(self) -> asyncio.Protocol:
        assert self._protocol_class is not None
        return self._protocol_class(  # type: ignore[no-any-return]
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )

    def _closed(self) -> None:
        self._tell(CLOSED)

    async def _serve_connection(self, connection: socket.socket) -> None:
        connection.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            _transport, protocol = await loop.connect_accepted_socket(self._protocol, connection)
        except Exception:  # the peer left before it was served: count it closed
            connection.close()
            self._closed()
            return
        if self.should_exit:
            # Made after uvicorn asked every connection to finish: ask this one too.
            protocol.shutdown()  # type: ignore[attr-defined]  # uvicorn's HTTP protocols


def _closing_reporter(base: type, closed: Callable[[], None]) -> type:
    """The HTTP protocol class `base`, calling `closed` once its connection is lost.

    It also finishes a new connection gracefully when the worker stops: uvicorn closes every
    connection without a request in progress, which for one handed over a moment ago drops
    the request its client is sending. Such a connection (opened less than
    ``_FIRST_REQUEST_GRACE`` ago, no request yet) instead answers its first request with
    ``Connection: close``, or is closed once the grace has passed without one.
    """

    class ClosingReporter(base):  # type: ignore[misc]
        opened_at = 0.0
        finish_after_request = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.opened_at = asyncio.get_running_loop().time()
            super().connection_made(transport)

        def shutdown(self) -> None:
            waited = asyncio.get_running_loop().time() - self.opened_at
            if self.cycle is None and waited < _FIRST_REQUEST_GRACE:
                if not self.finish_after_request:
                    self.finish_after_request = True
                    asyncio.get_running_loop().call_later(
                        _FIRST_REQUEST_GRACE - waited, self._stop_waiting
                    )
                return
            super().shutdown()

        def _stop_waiting(self) -> None:
            if self.finish_after_request:
                self.finish_after_request = False
                super().shutdown()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.finish_after_request and self.cycle is not None:
                # The request has begun and its response has not: it goes out with
                # Connection: close, and the connection closes after it.
                self.finish_after_request = False
                super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            try:
                super().connection_lost(exc)
            finally:
                closed()

    return ClosingReporter


class WorkerPool:
    """The supervisor: accepts on the port, hands connections out, keeps `count` workers up.

    Signals: SIGINT/SIGTERM stop (workers finish their requests, within uvicorn's graceful
    time-out); SIGHUP replaces every worker, each old one serving until a new one is ready
    (or for good, when the new ones cannot start); SIGTTIN/SIGTTOU add or remove a worker.
    A serving worker silent for `timeout` seconds is killed and replaced (0: never).
    """

    def __init__(self, config: uvicorn.Config, count: int, timeout: float = 60.0) -> None:
        self.config = config
        self.count = max(1, count)
        self.timeout = max(0.0, timeout)
        self.quiet_after = min(_QUIET_AFTER, self.timeout / 2) if self.timeout else _QUIET_AFTER
        self.workers: list[_Worker] = []
        self._context = multiprocessing.get_context("spawn")
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._listening = False
        self._signals: list[int] = []
        self._turn = itertools.count()
        self._slots = itertools.count()
        self._status = 0
        self._ever_ready = False
        self._paused_until = 0.0

    # -- the run -----------------------------------------------------------------------

    def run(self) -> int:
        """Serve until told to stop; the exit status (non-zero when workers cannot start)."""
        listener = self.config.bind_socket()
        listener.listen(self.config.backlog)
        listener.setblocking(False)
        self._listener = listener
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        self._selector.register(wake_read, selectors.EVENT_READ, "wake")
        previous_wakeup = signal.set_wakeup_fd(wake_write.fileno())
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
        previous = {number: signal.signal(number, self._on_signal) for number in handled}
        log.info("supervisor %d: starting %d workers", os.getpid(), self.count)
        try:
            for _ in range(self.count):
                self._spawn()
            self._loop(wake_read)
        finally:
            self._stop_listening()
            listener.close()
            self._stop_workers()
            signal.set_wakeup_fd(previous_wakeup)
            for number, handler in previous.items():
                signal.signal(number, handler)
            self._selector.close()
            wake_read.close()
            wake_write.close()
        return self._status

    def _on_signal(self, number: int, _frame: object) -> None:
        self._signals.append(number)

    def _loop(self, wake: socket.socket) -> None:
        last_watch = time.monotonic()
        while True:
            for key, _events in self._selector.select(timeout=_WATCH_INTERVAL):
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError, InterruptedError):
                        wake.recv(4096)
                elif key.data == "listener":
                    self._accept()
                else:
                    self._read_worker(key.data)
            if not self._handle_signals():
                return
            now = time.monotonic()
            if now - last_watch >= _WATCH_INTERVAL:
                last_watch = now
                if not self._watch():
                    return
            self._update_listening()

    # -- connections -------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                connection, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # Out of descriptors, say: leave the connections queued and look again
                # shortly, rather than spin on a socket that stays readable.
                log.error("supervisor: accept failed: %s", error)
                self._paused_until = time.monotonic() + _WATCH_INTERVAL
                self._stop_listening()
                return
            try:
                self._hand_over(connection)
            finally:
                connection.close()  # the worker holds its own copy now (or nobody could)

    def _hand_over(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for worker in self._by_load():
            try:
                socket.send_fds(worker.channel, [CONNECTION], [connection.fileno()])
            except (BlockingIOError, InterruptedError):
                continue  # its channel is full: it is not reading, so not this one
            except OSError:
                self._forget(worker)
                continue
            worker.open += 1
            return
        log.error("supervisor: no worker could take a connection; it was closed")

    def _by_load(self) -> list[_Worker]:
        """Ready workers, fewest open connections first, ties taken in turn; workers that
        went quiet or are retiring only when there is no other."""
        quiet = time.monotonic() - self.quiet_after
        ready = [w for w in self.workers if w.ready]
        candidates = [w for w in ready if not w.retiring and w.heard >= quiet]
        if not candidates:
            candidates = [w for w in ready if w.heard >= quiet] or ready
        if not candidates:
            return []
        turn = next(self._turn) % len(candidates)
        rotated = candidates[turn:] + candidates[:turn]
        return sorted(rotated, key=lambda w: w.open)

    def _update_listening(self) -> None:
        """Accept only while some worker can serve; until then connections wait in the
        kernel's backlog rather than in a worker that is still starting."""
        assert self._listener is not None
        wanted = any(w.ready for w in self.workers) and time.monotonic() >= self._paused_until
        if wanted and not self._listening:
            self._selector.register(self._listener, selectors.EVENT_READ, "listener")
            self._listening = True
        elif not wanted and self._listening:
            self._stop_listening()

    def _stop_listening(self) -> None:
        if self._listening and self._listener is not None:
            self._selector.unregister(self._listener)
            self._listening = False

    # -- workers -----------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = self._context.Process(
            target=_worker_main,
            args=(self.config, theirs),
            name=f"dicomweb-worker-{next(self._slots)}",
        )
        process.start()
        theirs.close()
        mine.setblocking(False)
        worker = _Worker(process=process, channel=mine)
        self.workers.append(worker)
        self._selector.register(mine, selectors.EVENT_READ, worker)
        log.info("supervisor: started worker %d", process.pid)
        return worker

    def _read_worker(self, worker: _Worker) -> None:
        try:
            data = worker.channel.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._forget(worker)  # it is shutting down or dead; _watch reaps the process
            return
        worker.heard = time.monotonic()
        if READY in data and not worker.ready:
            worker.ready = worker.served = True
            self._ever_ready = True
            log.info("supervisor: worker %d ready", worker.process.pid)
            self._retire_replaced()
        worker.open = max(0, worker.open - data.count(CLOSED))

    def _forget(self, worker: _Worker) -> None:
        """Stop talking to a worker (its process may still be finishing its requests)."""
        if worker.channel.fileno() != -1:
            self._selector.unregister(worker.channel)
            worker.channel.close()
        worker.ready = False

    def _watch(self) -> bool:
        """Reap dead workers and replace them; False when the pool must stop."""
        self._kill_hung()
        for worker in list(self.workers):
            if worker.process.is_alive():
                continue
            worker.process.join()
            self._forget(worker)
            self.workers.remove(worker)
            code = worker.process.exitcode
            if worker.retiring:
                continue
            if not worker.served and (code == STARTUP_FAILURE or not self._ever_ready):
                if self._abandon_replacement(code):
                    continue
                # It failed before serving: the application or its settings are broken and
                # a replacement would fail the same way, again and again.
                log.error(
                    "supervisor: worker %d failed to start (exit %s); stopping",
                    worker.process.pid,
                    code,
                )
                self._status = 1
                return False
            log.warning(
                "supervisor: worker %d died (exit %s); starting another", worker.process.pid, code
            )
            self._spawn()
        return True

    def _kill_hung(self) -> None:
        """Kill serving workers silent for the time-out; `_watch` then replaces them."""
        if not self.timeout:
            return
        now = time.monotonic()
        for worker in self.workers:
            silent = now - worker.heard
            if not worker.ready or worker.retiring or silent < self.timeout:
                continue
            log.error(
                "supervisor: worker %d has not answered for %.0f s (its event loop is stuck "
                "or the process stopped); killing it",
                worker.process.pid,
                silent,
            )
            if worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGKILL)
            self._forget(worker)

    def _abandon_replacement(self, code: int | None) -> bool:
        """After SIGHUP, a new worker that cannot start (a broken upgrade, say) leaves the
        old workers serving instead of stopping the server; True when there were some."""
        old = [w for w in self.workers if w.retiring and w.ready]
        if not old:
            return False
        log.error(
            "supervisor: a replacement worker failed to start (exit %s); "
            "the %d old workers keep serving",
            code,
            len(old),
        )
        pending = [w for w in self.workers if not w.retiring]
        for worker in old:
            worker.retiring = False
        for worker in pending:
            worker.retiring = True
            self._terminate(worker)
        return True

    def _retire_replaced(self) -> None:
        """After SIGHUP: old workers stop once as many new ones are ready."""
        retiring = [w for w in self.workers if w.retiring]
        if not retiring:
            return
        fresh_ready = [w for w in self.workers if not w.retiring and w.ready]
        if len(fresh_ready) >= self.count:
            for worker in retiring:
                self._terminate(worker)

    def _terminate(self, worker: _Worker) -> None:
        if worker.process.is_alive() and worker.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid, signal.SIGTERM)
        self._forget(worker)

    def _handle_signals(self) -> bool:
        """Act on signals received; False when the pool must stop."""
        while self._signals:
            number = self._signals.pop(0)
            if number in (signal.SIGINT, signal.SIGTERM):
                log.info("supervisor: %s, stopping", signal.Signals(number).name)
                return False
            if number == signal.SIGHUP:
                log.info("supervisor: SIGHUP, replacing the workers")
                for worker in self.workers:
                    worker.retiring = True
                for _ in range(self.count):
                    self._spawn()
            elif number == signal.SIGTTIN:
                self.count += 1
                self._spawn()
            elif number == signal.SIGTTOU and self.count > 1:
                self.count -= 1
                serving = [w for w in self.workers if not w.retiring]
                if serving:
                    victim = min(serving, key=lambda w: w.open)
                    victim.retiring = True
                    self._terminate(victim)
        return True

    def _stop_workers(self) -> None:
        """SIGTERM every worker, wait for their graceful shutdown, then kill what is left."""
        for worker in self.workers:
            self._terminate(worker)
        deadline = time.monotonic() + (self.config.timeout_graceful_shutdown or 30) + 5
        for worker in self.workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error(
                    "supervisor: worker %d did not stop in time; killing it", worker.process.pid
                )
                worker.process.kill()
                worker.process.join()
        self.workers.clear()


def serve(config: uvicorn.Config, workers: int, timeout: float = 60.0) -> int:
    """Run `workers` uvicorn workers for `config` behind one balancing supervisor; a worker
    silent for `timeout` seconds is replaced (0: never)."""
    if sys.platform == "win32":  # pragma: no cover - descriptor passing is POSIX
        raise RuntimeError("the worker pool needs a POSIX system")
    return WorkerPool(config, workers, timeout).run()
