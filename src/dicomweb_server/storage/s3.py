"""Blob store on an S3-compatible object store (AWS S3, SeaweedFS, MinIO, Ceph RGW).

Staging stays on local disk, as for every store: ingest parses the staged file, and a local
file is what makes an upload cheap to retry and an interrupted one cheap to clean up.
Committing uploads the staged file, in one PUT or, past a threshold, in parts, and returns
only once the service has acknowledged the complete object, so the index row the caller
commits next never points at bytes that are not there. Neither way leaves a partial object:
a PUT is atomic, and a multipart upload that fails is aborted.

Every upload carries a checksum that the service verifies before it stores anything. A
single PUT carries the SHA-256 computed while the bytes arrived from the client, so the
object is checked against what the client sent, end to end. A multipart upload carries
each part's SHA-256, and the parts are hashed again in order on the way out, so a staging
file that changed after ingest is refused rather than stored.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dicomweb_server.errors import StorageError
from dicomweb_server.storage.base import BlobStore, BlobStoreConfigurationError, StagedBlob

log = logging.getLogger(__name__)

MiB = 1024**2
#: S3 refuses parts smaller than this, except the last one.
MIN_PART_BYTES = 5 * MiB
#: S3 allows at most this many parts in one upload; larger objects get larger parts.
MAX_PARTS = 10_000
#: Parts of one object uploaded at once. A few keep one object's upload busy; more would
#: take connections from the readers that share the client's pool.
PARTS_IN_FLIGHT = 4
#: Multipart uploads older than this found at start-up were left by a process that died
#: mid-upload: nothing live takes a day to upload one instance.
STALE_UPLOAD_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class S3Options:
    """Where the objects live and how the client talks to the service.

    Credentials left unset come from boto3's standard chain (environment variables, shared
    config files, instance or container roles).
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    multipart_threshold: int = 64 * MiB
    multipart_chunk: int = 16 * MiB
    max_connections: int = 64
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 4

    @property
    def where(self) -> str:
        """The bucket and endpoint, as an operator would look them up."""
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'AWS S3'}"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _is_missing(exc: ClientError) -> bool:
    """A missing object: NoSuchKey from GET, a bare 404 from HEAD (which has no body)."""
    code = _error_code(exc)
    return code in ("NoSuchKey", "404", "NotFound") or (
        _http_status(exc) == 404 and code != "NoSuchBucket"
    )


def _is_unsatisfiable(exc: ClientError) -> bool:
    """A range that starts at or past the end of the object (HTTP 416)."""
    return _error_code(exc) == "InvalidRange" or _http_status(exc) == 416


def _describe(exc: BaseException) -> str:
    """A short reason that names no endpoint: it may reach clients in a response."""
    if isinstance(exc, ClientError):
        return f"{_error_code(exc) or 'error'}, HTTP {_http_status(exc)}"
    return type(exc).__name__


def _exact_chunks(body: Any, chunk_size: int, limit: int | None) -> Iterator[bytes]:
    """Chunks of exactly ``chunk_size`` bytes but the last, at most ``limit`` bytes in all.

    Exact sizes matter to callers that byte-swap chunk by chunk; HTTP reads may come back
    shorter than asked.
    """
    pending = bytearray()
    remaining = limit
    while remaining is None or remaining > 0:
        want = chunk_size - len(pending)
        if remaining is not None:
            want = min(want, remaining)
        data: bytes = body.read(want)
        if not data:
            break
        if remaining is not None:
            remaining -= len(data)
        if not pending and len(data) == chunk_size:
            yield data
            continue
        pending += data
        if len(pending) >= chunk_size:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)


class S3BlobStore(BlobStore):
    """Blobs as objects ``<prefix>/<key>`` in one bucket.

    One boto3 client serves every thread (clients are thread-safe, sessions are not, so the
    session is used only here, while constructing), with a connection pool sized for the
    archive's concurrency and retries in boto3's standard mode. A second client that never
    retries answers the readiness probe quickly when the service is away.
    """

    def __init__(self, options: S3Options, staging_dir: Path) -> None:
        super().__init__(staging_dir)
        self.options = options
        prefix = options.prefix.strip("/")
        self._prefix = f"{prefix}/" if prefix else ""
        self._bucket = options.bucket
        session = boto3.session.Session(
            aws_access_key_id=options.access_key_id,
            aws_secret_access_key=options.secret_access_key,
            region_name=options.region,
        )
        style = options.addressing_style
        if style == "auto" and options.endpoint_url:
            # S3-compatible services are addressed by path; virtual hosts need DNS set up.
            style = "path"
        self._client: Any = session.client(
            "s3",
            endpoint_url=options.endpoint_url,
            config=Config(
                max_pool_connections=options.max_connections,
                connect_timeout=options.connect_timeout,
                read_timeout=options.read_timeout,
                retries={"mode": "standard", "total_max_attempts": options.max_attempts},
                s3={"addressing_style": style},
                tcp_keepalive=True,
            ),
        )
        self._probe: Any = session.client(
            "s3",
            endpoint_url=options.endpoint_url,
            config=Config(
                max_pool_connections=2,
                connect_timeout=min(options.connect_timeout, 2.0),
                read_timeout=min(options.read_timeout, 5.0),
                retries={"mode": "standard", "total_max_attempts": 1},
                s3={"addressing_style": style},
            ),
        )

    def object_name(self, key: str) -> str:
        """The S3 key of a blob key.

        Keys come from the archive, but one read back from a damaged index must still never
        leave the prefix: some services normalise ``..`` in object keys like paths.
        """
        path = PurePosixPath(key)
        if not key or ".." in path.parts or key.startswith("/"):
            raise KeyError(key)
        return self._prefix + key

    def _failure(self, action: str, key: str, exc: BaseException) -> StorageError:
        log.warning("object store: could not %s %s in %s: %s", action, key, self.options.where, exc)
        return StorageError(
            f"the object store could not {action} a blob ({_describe(exc)}); retry later"
        )

    # --- start-up and readiness ---

    def require_bucket(self, *, create: bool = False) -> None:
        """Make sure the bucket exists and is accessible, creating it only when asked.

        Production buckets are made by whoever owns the account, with their policies and
        lifecycle rules; the archive creates one only for embedded or test set-ups.
        """
        try:
            self._client.head_bucket(Bucket=self._bucket)
            return
        except ClientError as exc:
            status = _http_status(exc)
            if status in (401, 403):
                raise BlobStoreConfigurationError(
                    f"access denied to S3 {self.options.where} ({_describe(exc)}): check the "
                    "access key and its permissions"
                ) from exc
            if status != 404:
                raise BlobStoreConfigurationError(
                    f"S3 {self.options.where} cannot be used ({_describe(exc)})"
                ) from exc
        except BotoCoreError as exc:
            raise BlobStoreConfigurationError(
                f"cannot reach S3 {self.options.where}: {exc}"
            ) from exc
        if not create:
            raise BlobStoreConfigurationError(
                f"S3 {self.options.where} does not exist; create it, or enable "
                "s3_create_bucket to have the archive create it"
            )
        self._create_bucket()

    def _create_bucket(self) -> None:
        arguments: dict[str, Any] = {"Bucket": self._bucket}
        region = self.options.region
        if region and region != "us-east-1":
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**arguments)
        except ClientError as exc:
            # Already ours (another process won the race) is fine; "BucketAlreadyExists"
            # means someone else's bucket has the name, which is not.
            if _error_code(exc) != "BucketAlreadyOwnedByYou":
                raise BlobStoreConfigurationError(
                    f"could not create S3 {self.options.where} ({_describe(exc)})"
                ) from exc
        except BotoCoreError as exc:
            raise BlobStoreConfigurationError(
                f"could not create S3 {self.options.where}: {exc}"
            ) from exc
        log.info("created S3 %s", self.options.where)

    def check(self) -> str | None:
        problem = super().check()
        if problem is not None:
            return problem
        try:
            self._probe.head_bucket(Bucket=self._bucket)
        except (BotoCoreError, ClientError) as exc:
            return f"object store unavailable ({_describe(exc)})"
        return None

    def clear_staging(self) -> int:
        removed = super().clear_staging()
        self.abort_stale_uploads(STALE_UPLOAD_SECONDS)
        return removed

    def abort_stale_uploads(self, older_than: float) -> int:
        """Abort multipart uploads under the prefix begun more than ``older_than`` seconds ago.

        A process that dies mid-upload leaves its parts stored, invisible and billed; the age
        keeps this from touching an upload another live process is still sending. Returns
        how many were aborted; failures are logged, never raised (start-up goes on).
        """
        cutoff = time.time() - older_than
        aborted = 0
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self._bucket, Prefix=self._prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() < cutoff:
                        self._abort(upload["Key"], upload["UploadId"])
                        aborted += 1
        except (BotoCoreError, ClientError) as exc:
            log.warning("could not list multipart uploads in %s: %s", self.options.where, exc)
        if aborted:
            log.info("aborted %d abandoned multipart uploads in %s", aborted, self.options.where)
        return aborted

    # --- writes ---

    def commit(self, staged: StagedBlob, key: str) -> None:
        name = self.object_name(key)
        try:
            if staged.size < self.options.multipart_threshold:
                self._put(staged, name)
            else:
                self._put_multipart(staged, name)
        except (BotoCoreError, ClientError) as exc:
            raise self._failure("store", key, exc) from exc
        staged.path.unlink(missing_ok=True)

    def _put(self, staged: StagedBlob, name: str) -> None:
        with staged.path.open("rb") as body:
            self._client.put_object(
                Bucket=self._bucket,
                Key=name,
                Body=body,
                ContentLength=staged.size,
                ChecksumSHA256=_b64(bytes.fromhex(staged.sha256)),
                Metadata={"sha256": staged.sha256},
            )

    def _put_multipart(self, staged: StagedBlob, name: str) -> None:
        part_size = max(self.options.multipart_chunk, MIN_PART_BYTES, -(-staged.size // MAX_PARTS))
        upload = self._client.create_multipart_upload(
            Bucket=self._bucket,
            Key=name,
            ChecksumAlgorithm="SHA256",
            Metadata={"sha256": staged.sha256},
        )
        upload_id: str = upload["UploadId"]
        try:
            parts = self._upload_parts(staged, name, upload_id, part_size)
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self._abort(name, upload_id)
            raise

    def _upload_parts(
        self, staged: StagedBlob, name: str, upload_id: str, part_size: int
    ) -> list[dict[str, Any]]:
        """Send the staged file in parts, a few at a time; their descriptions, in order.

        The file is read once, in order, in this thread: that is where the whole file's hash
        is recomputed and compared with the one taken at ingest.
        """
        whole = hashlib.sha256()
        futures: list[Future[dict[str, Any]]] = []
        in_flight: set[Future[dict[str, Any]]] = set()
        with (
            ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="s3-part") as pool,
            staged.path.open("rb") as source,
        ):
            remaining = staged.size
            while remaining > 0:
                if len(in_flight) >= PARTS_IN_FLIGHT:
                    # Bounds memory to a few parts, and stops early once a part failed.
                    finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        future.result()
                data = source.read(min(part_size, remaining))
                if not data:
                    break
                whole.update(data)
                remaining -= len(data)
                future = pool.submit(self._upload_part, name, upload_id, len(futures) + 1, data)
                futures.append(future)
                in_flight.add(future)
            longer = bool(source.read(1))
        parts = [future.result() for future in futures]
        if remaining or longer or whole.hexdigest() != staged.sha256:
            log.error("staging file %s no longer matches its ingest hash", staged.path)
            raise StorageError("a staged instance changed after it was received; nothing stored")
        return parts

    def _upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        checksum = _b64(hashlib.sha256(data).digest())
        response = self._client.upload_part(
            Bucket=self._bucket,
            Key=name,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ChecksumSHA256=checksum,
        )
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}

    def _abort(self, name: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=name, UploadId=upload_id)
        except (BotoCoreError, ClientError) as exc:
            # Its parts stay invisible; a later start-up aborts it once it is stale.
            log.warning("could not abort the multipart upload of %s: %s", name, exc)

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self._bucket, Key=self.object_name(key))
        except ClientError as exc:
            if not _is_missing(exc):
                raise self._failure("delete", key, exc) from exc
        except BotoCoreError as exc:
            raise self._failure("delete", key, exc) from exc

    # --- reads ---

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            response: dict[str, Any] = self._client.head_object(
                Bucket=self._bucket, Key=self.object_name(key)
            )
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise self._failure("look up", key, exc) from exc
        except BotoCoreError as exc:
            raise self._failure("look up", key, exc) from exc
        return response

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise KeyError(key)
        return int(head["ContentLength"])

    def _get(self, key: str, first: int, last: int | None) -> Any | None:
        """The streaming body of bytes ``first..last`` (inclusive; to the end when ``None``),
        or ``None`` when ``first`` is at or past the end of the object."""
        byte_range = f"bytes={first}-" if last is None else f"bytes={first}-{last}"
        try:
            response = self._client.get_object(
                Bucket=self._bucket, Key=self.object_name(key), Range=byte_range
            )
        except ClientError as exc:
            if _is_missing(exc):
                raise KeyError(key) from exc
            if _is_unsatisfiable(exc):
                return None
            raise self._failure("read", key, exc) from exc
        except BotoCoreError as exc:
            raise self._failure("read", key, exc) from exc
        body = response["Body"]
        if response["ResponseMetadata"]["HTTPStatusCode"] != 206 and first > 0:
            # A service that ignores Range sends the object from its first byte.
            body.close()
            raise StorageError("the object store ignored a byte range request")
        return body

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            self.size(key)  # a missing blob is an error whatever the length, as on disk
            return b""
        body = self._get(key, offset, offset + length - 1)
        if body is None:
            return b""
        with closing(body):
            try:
                data: bytes = body.read()
            except BotoCoreError as exc:
                raise self._failure("read", key, exc) from exc
        return data[:length]

    def iter_range(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        if length is not None and length <= 0:
            self.size(key)
            return
        body = self._get(key, offset, None if length is None else offset + length - 1)
        if body is None:
            return
        with closing(body):
            try:
                yield from _exact_chunks(body, chunk_size, length)
            except BotoCoreError as exc:
                raise self._failure("read", key, exc) from exc

    def local_path(self, key: str) -> Path | None:
        return None
