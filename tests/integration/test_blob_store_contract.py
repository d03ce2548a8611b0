"""One contract for every blob store: filesystem, in-memory twin, and S3 on a real SeaweedFS.

Code above the storage layer may rely on exactly what these tests check, whichever store is
configured: commits consume the staging file, reads behave like ``pread`` at the edges
(short past the end, empty at or beyond it), a missing key is ``KeyError``, deletes are
idempotent, and all of it holds under concurrent use.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dicomweb_server.errors import StorageError
from dicomweb_server.settings import Settings
from dicomweb_server.storage import (
    BlobStore,
    FilesystemBlobStore,
    MemoryBlobStore,
    StagedBlob,
    new_blob_key,
    open_blob_store,
)
from dicomweb_server.storage.s3 import BlobStoreConfigurationError, S3BlobStore, S3Options
from tests.conftest import S3_TEST_BUCKET
from tests.page_cache import evict
from tests.seaweedfs import SeaweedFS

MiB = 1024**2
BACKENDS = ["filesystem", "memory", "s3"]


def s3_options(seaweedfs: SeaweedFS, prefix: str, **overrides: Any) -> S3Options:
    settings: dict[str, Any] = {
        "bucket": S3_TEST_BUCKET,
        "prefix": prefix,
        "endpoint_url": seaweedfs.endpoint_url,
        "region": seaweedfs.region,
        "access_key_id": seaweedfs.access_key,
        "secret_access_key": seaweedfs.secret_key,
        "multipart_threshold": 5 * MiB,
        "multipart_chunk": 5 * MiB,
        "max_connections": 32,
    }
    settings.update(overrides)
    return S3Options(**settings)


def make_store(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, prefix: str
) -> BlobStore:
    if backend == "filesystem":
        return FilesystemBlobStore(tmp_path / "blobs")
    if backend == "memory":
        return MemoryBlobStore(tmp_path / "staging")
    seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
    return S3BlobStore(s3_options(seaweedfs, prefix), tmp_path / "staging")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, s3_prefix: str) -> BlobStore:
    return make_store(request.param, tmp_path, request, s3_prefix)


@pytest.fixture
def s3_store(seaweedfs: SeaweedFS, tmp_path: Path, s3_prefix: str) -> S3BlobStore:
    return S3BlobStore(s3_options(seaweedfs, s3_prefix), tmp_path / "staging")


def stage(store: BlobStore, data: bytes, piece: int = 1 << 16) -> StagedBlob:
    writer = store.staging_writer()
    for start in range(0, len(data), piece):
        writer.write(data[start : start + piece])
    return writer.finish()


def commit(store: BlobStore, data: bytes) -> str:
    staged = stage(store, data)
    key = new_blob_key(staged.sha256)
    store.commit(staged, key)
    return key


def staged_files(store: BlobStore) -> list[Path]:
    return sorted(store.staging_dir.rglob("*.part"))


# --- writes ---------------------------------------------------------------------------------


def test_commit_consumes_the_staging_file_and_stores_the_bytes(store: BlobStore) -> None:
    data = os.urandom(100_003)
    staged = stage(store, data)
    assert staged.size == len(data) and staged.sha256 == hashlib.sha256(data).hexdigest()
    assert staged_files(store) == [staged.path]
    key = new_blob_key(staged.sha256)
    assert not store.exists(key)
    store.commit(staged, key)
    assert staged_files(store) == []
    assert store.exists(key)
    assert store.size(key) == len(data)
    assert store.read_range(key, 0, len(data)) == data
    assert b"".join(store.iter_range(key)) == data


def test_empty_blob(store: BlobStore) -> None:
    key = commit(store, b"")
    assert store.exists(key)
    assert store.size(key) == 0
    assert store.read_range(key, 0, 0) == b""
    assert store.read_range(key, 0, 10) == b""
    assert list(store.iter_range(key)) == []
    assert list(store.iter_range(key, 0, 10)) == []


def test_large_blob_round_trip(store: BlobStore) -> None:
    """12 MiB: on S3 (threshold lowered to 5 MiB) three parts of a multipart upload."""
    data = os.urandom(12 * MiB + 12_345)
    key = commit(store, data)
    assert store.size(key) == len(data)
    assert hashlib.sha256(b"".join(store.iter_range(key))).digest() == (
        hashlib.sha256(data).digest()
    )
    boundary = 5 * MiB
    assert store.read_range(key, boundary - 7, 14) == data[boundary - 7 : boundary + 7]
    assert store.read_range(key, len(data) - 1, 1) == data[-1:]


def test_multipart_upload_is_used_and_verified(s3_store: S3BlobStore, seaweedfs: SeaweedFS) -> None:
    data = os.urandom(12 * MiB)
    key = commit(s3_store, data)
    head = seaweedfs.client().head_object(
        Bucket=S3_TEST_BUCKET, Key=s3_store.object_name(key), ChecksumMode="ENABLED"
    )
    assert head["ETag"].endswith('-3"'), head["ETag"]  # 5 + 5 + 2 MiB
    assert head.get("ChecksumSHA256", "").endswith("-3"), head  # each part was checked
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert s3_store.read_range(key, 0, len(data)) == data


def test_single_put_carries_the_ingest_hash(s3_store: S3BlobStore, seaweedfs: SeaweedFS) -> None:
    data = os.urandom(4096)
    key = commit(s3_store, data)
    head = seaweedfs.client().head_object(
        Bucket=S3_TEST_BUCKET, Key=s3_store.object_name(key), ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [4096, 11 * MiB], ids=["put", "multipart"])
def test_staging_file_changed_after_ingest_is_refused(
    s3_store: S3BlobStore, seaweedfs: SeaweedFS, s3_prefix: str, size: int
) -> None:
    """The service checks the ingest hash (single PUT) and the parts are re-hashed
    (multipart): altered bytes are never stored, and no upload is left behind."""
    data = bytearray(os.urandom(size))
    staged = stage(s3_store, bytes(data))
    data[size // 2] ^= 0xFF
    staged.path.write_bytes(bytes(data))
    key = new_blob_key(staged.sha256)
    with pytest.raises(StorageError):
        s3_store.commit(staged, key)
    assert not s3_store.exists(key)
    assert staged.path.exists()  # the caller decides what becomes of a failed part
    client = seaweedfs.client()
    uploads = client.list_multipart_uploads(Bucket=S3_TEST_BUCKET, Prefix=s3_prefix)
    assert uploads.get("Uploads", []) == []
    assert seaweedfs.object_keys(S3_TEST_BUCKET, s3_prefix) == set()


def test_truncated_staging_file_is_refused(s3_store: S3BlobStore, seaweedfs: SeaweedFS) -> None:
    data = os.urandom(11 * MiB)
    staged = stage(s3_store, data)
    with staged.path.open("r+b") as file:
        file.truncate(7 * MiB)
    key = new_blob_key(staged.sha256)
    with pytest.raises(StorageError):
        s3_store.commit(staged, key)
    assert not s3_store.exists(key)


# --- reads ----------------------------------------------------------------------------------


def test_ranges_behave_like_pread(store: BlobStore) -> None:
    data = os.urandom(10_000)
    key = commit(store, data)
    size = len(data)
    for offset, length in [(0, 1), (0, 132), (1, 9), (4321, 1000), (size - 1, 1), (0, size)]:
        assert store.read_range(key, offset, length) == data[offset : offset + length]
    # Zero-length reads anywhere, including at and beyond the end.
    for offset in (0, 17, size, size + 5):
        assert store.read_range(key, offset, 0) == b""
    # Past the end: short, then empty.
    assert store.read_range(key, size - 3, 10) == data[-3:]
    assert store.read_range(key, size, 10) == b""
    assert store.read_range(key, size + 100, 10) == b""


def test_reads_now_give_the_whole_range_or_nothing(store: BlobStore) -> None:
    """What the event loop reads itself (no waiting): exactly the range, or ``None``."""
    data = os.urandom(10_000)
    key = commit(store, data)
    size = len(data)
    for offset, length in [(0, 1), (1, 9), (4321, 1000), (size - 1, 1), (0, size)]:
        found = store.read_range_now(key, offset, length)
        assert found is None or found == data[offset : offset + length]
        assert found is None or store.reads_now
    # Never short: a range that runs past the end is left to read_range.
    for offset, length in [(size - 3, 10), (size, 10), (size + 100, 10)]:
        assert store.read_range_now(key, offset, length) is None
    missing = new_blob_key(hashlib.sha256(b"never stored").hexdigest())
    with contextlib.suppress(KeyError):  # either answer says "not here"
        assert store.read_range_now(missing, 0, 10) is None


def test_filesystem_reads_now_only_what_the_page_cache_holds(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    data = os.urandom(3 * MiB)
    key = commit(store, data)  # committed blobs are flushed, so their pages can be dropped
    path = store.local_path(key)
    assert path is not None
    assert store.read_range(key, 0, 3 * MiB) == data
    assert store.read_range_now(key, 0, MiB) == data[:MiB]

    evict(path)
    assert store.read_range_now(key, 0, MiB) is None  # it would wait on the disk
    assert store.read_range(key, 0, 3 * MiB) == data  # the waiting read brings it back
    assert store.read_range_now(key, 5, MiB) == data[5 : MiB + 5]

    # Only partly in memory: nothing, not the part that is.
    evict(path, 2 * MiB)
    assert store.read_range_now(key, 2 * MiB - 8192, 16384) is None
    assert store.read_range_now(key, 2 * MiB - 8192, 8192) == data[2 * MiB - 8192 : 2 * MiB]
    with pytest.raises(KeyError):
        store.read_range_now(new_blob_key(hashlib.sha256(b"gone").hexdigest()), 0, 10)


def test_iter_range_chunks(store: BlobStore) -> None:
    data = os.urandom(10_007)
    key = commit(store, data)

    chunks = list(store.iter_range(key, chunk_size=1000))
    assert [len(chunk) for chunk in chunks] == [1000] * 10 + [7]
    assert b"".join(chunks) == data

    chunks = list(store.iter_range(key, 5, 2500, chunk_size=1024))
    assert [len(chunk) for chunk in chunks] == [1024, 1024, 452]
    assert b"".join(chunks) == data[5:2505]

    assert b"".join(store.iter_range(key, 9_000, chunk_size=256)) == data[9_000:]
    assert b"".join(store.iter_range(key, 10_000, 500)) == data[10_000:]
    assert list(store.iter_range(key, 10_007)) == []
    assert list(store.iter_range(key, 20_000, 10)) == []
    assert list(store.iter_range(key, 100, 0)) == []


def test_iter_range_chunks_are_exact_for_large_reads(store: BlobStore) -> None:
    """Byte-swapping callers need every chunk but the last to be exactly chunk_size."""
    data = os.urandom(3 * MiB + 5)
    key = commit(store, data)
    chunk_size = 256 * 1024 + 8
    chunks = list(store.iter_range(key, 3, None, chunk_size))
    assert all(len(chunk) == chunk_size for chunk in chunks[:-1])
    assert b"".join(chunks) == data[3:]


def test_missing_key_is_key_error(store: BlobStore) -> None:
    key = new_blob_key(hashlib.sha256(b"never stored").hexdigest())
    assert not store.exists(key)
    with pytest.raises(KeyError):
        store.size(key)
    with pytest.raises(KeyError):
        store.read_range(key, 0, 10)
    with pytest.raises(KeyError):
        store.read_range(key, 0, 0)
    with pytest.raises(KeyError):
        list(store.iter_range(key))
    with pytest.raises(KeyError):
        list(store.iter_range(key, 0, 0))


def test_delete_is_idempotent(store: BlobStore) -> None:
    key = commit(store, b"to be deleted")
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(KeyError):
        store.read_range(key, 0, 1)
    store.delete(key)  # again: not an error
    store.delete(new_blob_key(hashlib.sha256(b"never stored").hexdigest()))


@pytest.mark.parametrize("backend", ["filesystem", "s3"])
def test_keys_never_leave_the_store(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, s3_prefix: str
) -> None:
    store = make_store(backend, tmp_path, request, s3_prefix)
    for key in ("../escape", "aa/../../escape", "/etc/passwd"):
        with pytest.raises(KeyError):
            store.read_range(key, 0, 1)
        with pytest.raises(KeyError):
            store.commit(stage(store, b"x"), key)


def test_local_path(store: BlobStore) -> None:
    key = commit(store, b"abc")
    path = store.local_path(key)
    if isinstance(store, FilesystemBlobStore):
        assert path is not None and path.read_bytes() == b"abc"
    else:
        assert path is None


# --- concurrency ----------------------------------------------------------------------------


def test_concurrent_commits_and_reads(store: BlobStore) -> None:
    """Many threads share one store (and on S3 one client and connection pool)."""
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(6):
                data = rng.randbytes(rng.randrange(1, 300_000))
                key = commit(store, data)
                for _ in range(3):
                    offset = rng.randrange(len(data))
                    length = rng.randrange(1, 70_000)
                    assert store.read_range(key, offset, length) == data[offset : offset + length]
                assert b"".join(store.iter_range(key, chunk_size=65_536)) == data
                if rng.random() < 0.5:
                    store.delete(key)
                    assert not store.exists(key)
        except BaseException as exc:
            errors.append(exc)
            raise

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(work, range(24)))
    assert errors == []
    assert staged_files(store) == []


def test_concurrent_large_commits(s3_store: S3BlobStore) -> None:
    blobs = [os.urandom(6 * MiB + n) for n in range(3)]
    with ThreadPoolExecutor(3) as pool:
        keys = list(pool.map(lambda data: commit(s3_store, data), blobs))
    for key, data in zip(keys, blobs, strict=True):
        assert s3_store.read_range(key, 0, len(data)) == data


# --- S3 specifics: prefixes, start-up, readiness, leftovers -------------------------------


def test_prefixes_keep_archives_apart(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    first_prefix, second_prefix = f"a-{secrets.token_hex(4)}", f"b-{secrets.token_hex(4)}/"
    first = S3BlobStore(s3_options(seaweedfs, first_prefix), tmp_path / "one")
    second = S3BlobStore(s3_options(seaweedfs, second_prefix), tmp_path / "two")
    key = new_blob_key(hashlib.sha256(b"same key").hexdigest())
    first.commit(stage(first, b"first archive"), key)
    assert not second.exists(key)
    second.commit(stage(second, b"second archive!"), key)
    assert first.read_range(key, 0, 100) == b"first archive"
    assert second.read_range(key, 0, 100) == b"second archive!"
    assert seaweedfs.object_keys(S3_TEST_BUCKET, first_prefix + "/") == {f"{first_prefix}/{key}"}
    assert seaweedfs.object_keys(S3_TEST_BUCKET, second_prefix) == {f"{second_prefix}{key}"}
    first.delete(key)
    assert not first.exists(key)
    assert second.read_range(key, 0, 100) == b"second archive!"


def test_check_and_require_bucket(seaweedfs: SeaweedFS, tmp_path: Path, s3_prefix: str) -> None:
    store = S3BlobStore(s3_options(seaweedfs, s3_prefix), tmp_path / "staging")
    assert store.check() is None
    store.require_bucket()

    missing = f"missing-{secrets.token_hex(4)}"
    absent = S3BlobStore(s3_options(seaweedfs, s3_prefix, bucket=missing), tmp_path / "s2")
    assert absent.check() is not None
    with pytest.raises(BlobStoreConfigurationError) as info:
        absent.require_bucket()
    assert missing in str(info.value) and seaweedfs.endpoint_url in str(info.value)
    assert missing not in {b["Name"] for b in seaweedfs.client().list_buckets()["Buckets"]}

    wrong = S3BlobStore(
        s3_options(seaweedfs, s3_prefix, secret_access_key="not-the-secret"), tmp_path / "s3"
    )
    assert wrong.check() is not None
    with pytest.raises(BlobStoreConfigurationError, match="denied"):
        wrong.require_bucket()


def test_require_bucket_creates_only_when_asked(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    name = f"created-{secrets.token_hex(4)}"
    store = S3BlobStore(s3_options(seaweedfs, "", bucket=name), tmp_path / "staging")
    store.require_bucket(create=True)
    assert store.check() is None
    key = commit(store, b"in a new bucket")
    assert store.read_range(key, 0, 100) == b"in a new bucket"
    store.require_bucket(create=True)  # existing: fine


def test_unreachable_service_is_a_storage_error(tmp_path: Path) -> None:
    from tests.e2e.server import free_port

    options = S3Options(
        bucket="nowhere",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id="key",
        secret_access_key="secret",
        connect_timeout=1,
        max_attempts=1,
    )
    store = S3BlobStore(options, tmp_path / "staging")
    assert "unavailable" in (store.check() or "")
    staged = stage(store, b"data")
    with pytest.raises(StorageError, match="retry later"):
        store.commit(staged, new_blob_key(staged.sha256))
    assert staged.path.exists()
    with pytest.raises(StorageError):
        store.read_range("aa/bb/cc", 0, 1)
    with pytest.raises(BlobStoreConfigurationError, match="nowhere"):
        store.require_bucket()


def test_abandoned_multipart_uploads_are_aborted(
    s3_store: S3BlobStore, seaweedfs: SeaweedFS, s3_prefix: str
) -> None:
    client = seaweedfs.client()
    name = s3_store.object_name("ab/cd/abandoned")
    upload = client.create_multipart_upload(Bucket=S3_TEST_BUCKET, Key=name)
    client.upload_part(
        Bucket=S3_TEST_BUCKET, Key=name, UploadId=upload["UploadId"], PartNumber=1, Body=b"x"
    )
    assert s3_store.abort_stale_uploads(3600) == 0  # young: maybe still being sent
    time.sleep(1.5)
    assert s3_store.abort_stale_uploads(1) == 1
    listed = client.list_multipart_uploads(Bucket=S3_TEST_BUCKET, Prefix=s3_prefix)
    assert listed.get("Uploads", []) == []


def test_open_blob_store_from_settings(
    seaweedfs: SeaweedFS, tmp_path: Path, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "DICOMWEB_DATA_DIR": str(tmp_path),
        "DICOMWEB_STORAGE_BACKEND": "s3",
        "DICOMWEB_S3_BUCKET": S3_TEST_BUCKET,
        "DICOMWEB_S3_ENDPOINT_URL": seaweedfs.endpoint_url,
        "DICOMWEB_S3_ACCESS_KEY_ID": seaweedfs.access_key,
        "DICOMWEB_S3_SECRET_ACCESS_KEY": seaweedfs.secret_key,
        "DICOMWEB_S3_PREFIX": s3_prefix,
    }.items():
        monkeypatch.setenv(name, value)
    store = open_blob_store(Settings())
    assert isinstance(store, S3BlobStore)
    assert store.staging_dir == (tmp_path / "staging").resolve()
    key = commit(store, b"configured")
    assert seaweedfs.object_keys(S3_TEST_BUCKET, s3_prefix) == {f"{s3_prefix}/{key}"}

    monkeypatch.setenv("DICOMWEB_S3_BUCKET", f"absent-{secrets.token_hex(4)}")
    with pytest.raises(BlobStoreConfigurationError, match="does not exist"):
        open_blob_store(Settings())
    monkeypatch.delenv("DICOMWEB_S3_SECRET_ACCESS_KEY")
    with pytest.raises(BlobStoreConfigurationError, match="both"):
        open_blob_store(Settings())
    monkeypatch.delenv("DICOMWEB_S3_BUCKET")
    with pytest.raises(BlobStoreConfigurationError, match="DICOMWEB_S3_BUCKET"):
        open_blob_store(Settings())
    monkeypatch.setenv("DICOMWEB_STORAGE_BACKEND", "filesystem")
    assert isinstance(open_blob_store(Settings()), FilesystemBlobStore)
