"""The ceiling of the stack: frames and instances served, and instances stored, by a bare ASGI app.

No framework, no database, no authentication, no audit: at start-up every file of the
manifest is parsed once (with the archive's own ``parse_instance``, so frame byte ranges are
the ones the archive records), and each request is answered with ``os.pread`` of those ranges.
It runs under the same uvicorn settings as ``dicomweb-server serve``, so the difference
between it and the archive is what routing, the index lookup, authorization, auditing and
the response machinery cost. ``scripts/bench.py`` reports the archive's figures as a
fraction of it.

With ``--store-dir`` it also takes STOW-RS requests and does the least a store that
acknowledges only durable bytes must do: each part of the multipart body is written to a
file, flushed, renamed into place, and the folder flushed, in a worker thread, before the
answer. No hashing, no parsing, no index, no response detail: what is left of the archive's
STOW-RS when everything it does on top of HTTP and durable files is taken away.

Routes (the archive's paths, so the same requests go to both):
``/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/{n}`` (one frame number),
``/dicom-web/studies/{study}/series/{series}/instances/{sop}`` and
``/dicom-web/studies/{study}/series/{series}`` (multipart/related application/dicom),
``POST /dicom-web/studies`` (with ``--store-dir``), and ``/readyz``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from benchlib import multipart

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BOUNDARY = b"ceiling-4b1d"
CHUNK = 1024 * 1024
MANIFEST_VARIABLE = "BENCH_CEILING_MANIFEST"
STORE_VARIABLE = "BENCH_CEILING_STORE"


@dataclass(frozen=True, slots=True)
class Stored:
    """One file: its descriptor, size, series and frame byte ranges."""

    fd: int
    size: int
    series: str
    transfer_syntax: str
    frames: tuple[tuple[tuple[int, int], ...], ...]


def load(manifest: Path | None) -> tuple[dict[str, Stored], dict[str, list[str]]]:
    """Parse every file of the manifest (a JSON list of paths) once."""
    from dicomweb_server.dicom.parse import parse_instance

    instances: dict[str, Stored] = {}
    series: dict[str, list[str]] = {}
    for name in json.loads(manifest.read_text()) if manifest is not None else []:
        parsed = parse_instance(name, bulk_data_threshold=1024, bulk_uri=lambda *_: "")
        layout = parsed.pixel
        frames = (
            tuple(layout.frame_ranges(k) for k in range(layout.number_of_frames)) if layout else ()
        )
        fd = os.open(name, os.O_RDONLY)
        instances[parsed.sop_instance_uid] = Stored(
            fd,
            os.fstat(fd).st_size,
            parsed.series_instance_uid,
            parsed.transfer_syntax_uid,
            frames,
        )
        series.setdefault(parsed.series_instance_uid, []).append(parsed.sop_instance_uid)
    return instances, series


class DurableFolder:
    """Files written as the archive's filesystem store writes blobs: flushed, renamed, and
    the folder flushed, so a file that is there after a crash is whole."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY)

    def write(self, data: bytes) -> None:
        name = uuid.uuid4().hex
        staging = self.path / f".{name}.tmp"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(staging, self.path / f"{name}.dcm")
        os.fsync(self.folder)


class Ceiling:
    """The ASGI application."""

    def __init__(self, manifest: Path | None, store: Path | None = None) -> None:
        self.instances, self.series = load(manifest)
        self.store = DurableFolder(store) if store is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        segments = scope["path"].strip("/").split("/")
        if scope["method"] == "POST":
            if segments == ["dicom-web", "studies"] and self.store is not None:
                await self._store(scope, receive, send)
            else:
                await self._simple(send, 405, b"method not allowed")
        elif segments == ["readyz"]:
            await self._simple(send, 200, b"ready")
        elif len(segments) == 9 and segments[7] == "frames":
            await self._frame(send, segments[6], segments[8])
        elif len(segments) == 7 and segments[5] == "instances":
            await self._files(send, [segments[6]])
        elif len(segments) == 5 and segments[3] == "series":
            await self._files(send, self.series.get(segments[4], []))
        else:
            await self._simple(send, 404, b"not found")

    async def _store(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.store is not None
        body = bytearray()
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        content_type = ""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
        try:
            if not content_type.lower().startswith("multipart/related"):
                raise ValueError("not multipart/related")
            parts = [content for _, content in multipart.parts(bytes(body), content_type)]
        except ValueError:
            parts = []
        if not parts:
            await self._simple(send, 415, b"a multipart/related body is needed")
            return
        loop = asyncio.get_running_loop()
        for part in parts:
            await loop.run_in_executor(None, self.store.write, part)
        answer = b'{"00081199":{"vr":"SQ","Value":[%d]}}' % len(parts)
        headers = [
            (b"content-type", b"application/dicom+json"),
            (b"content-length", b"%d" % len(answer)),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    async def _simple(self, send: Send, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _frame(self, send: Send, sop: str, number: str) -> None:
        stored = self.instances.get(sop)
        index = int(number) - 1 if number.isdigit() else -1
        if stored is None or not 0 <= index < len(stored.frames):
            await self._simple(send, 404, b"no such frame")
            return
        data = b"".join(
            os.pread(stored.fd, length, offset) for offset, length in stored.frames[index]
        )
        syntax = stored.transfer_syntax.encode()
        head = (
            b"--"
            + BOUNDARY
            + b"\r\nContent-Type: application/octet-stream; transfer-syntax="
            + syntax
            + b"\r\n\r\n"
        )
        tail = b"\r\n--" + BOUNDARY + b"--\r\n"
        content_type = (
            b'multipart/related; type="application/octet-stream"; transfer-syntax='
            + syntax
            + b"; boundary="
            + BOUNDARY
        )
        headers = [
            (b"content-type", content_type),
            (b"content-length", b"%d" % (len(head) + len(data) + len(tail))),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": head + data + tail})

    async def _files(self, send: Send, uids: list[str]) -> None:
        stored = [self.instances[uid] for uid in uids if uid in self.instances]
        if not stored:
            await self._simple(send, 404, b"not found")
            return
        head = b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n"
        tail = b"--" + BOUNDARY + b"--\r\n"
        length = sum(len(head) + item.size + 2 for item in stored) + len(tail)
        content_type = b'multipart/related; type="application/dicom"; boundary=' + BOUNDARY
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % length)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for item in stored:
            await send({"type": "http.response.body", "body": head, "more_body": True})
            for offset in range(0, item.size, CHUNK):
                chunk = os.pread(item.fd, min(CHUNK, item.size - offset), offset)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"\r\n", "more_body": True})
        await send({"type": "http.response.body", "body": tail})


def create_app() -> Ceiling:
    """The app for uvicorn's factory mode; its paths come from the environment."""
    manifest = os.environ.get(MANIFEST_VARIABLE)
    store = os.environ.get(STORE_VARIABLE)
    return Ceiling(Path(manifest) if manifest else None, Path(store) if store else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", help="JSON list of the files to serve")
    parser.add_argument("--store-dir", help="take STOW-RS requests, keeping parts here")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.manifest:
        os.environ[MANIFEST_VARIABLE] = str(Path(args.manifest).resolve())
    if args.store_dir:
        os.environ[STORE_VARIABLE] = str(Path(args.store_dir).resolve())
    # The settings `dicomweb-server serve` passes to uvicorn (cli.py), so only the app differs.
    uvicorn.run(
        "bench_ceiling:create_app",
        factory=True,
        app_dir=str(Path(__file__).resolve().parent),
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
