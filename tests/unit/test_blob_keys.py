"""Blob keys: the store day first, then the hash, then a suffix owned by one attempt."""

from __future__ import annotations

import hashlib
import os
from datetime import date
from pathlib import Path

import pytest

from dicomweb_server.storage import StagedBlob, filesystem, new_blob_key
from dicomweb_server.storage.filesystem import FilesystemBlobStore

SHA = hashlib.sha256(b"an instance").hexdigest()


def test_a_key_starts_with_the_day_then_the_hash() -> None:
    key = new_blob_key(SHA, date(2026, 12, 7))
    year, month, day, folder, name = key.split("/")
    assert (year, month, day) == ("2026", "12", "07")
    assert folder == SHA[:2]
    digest, _, suffix = name.partition("-")
    assert digest == SHA and len(suffix) == 8


def test_every_attempt_gets_its_own_key() -> None:
    assert len({new_blob_key(SHA) for _ in range(100)}) == 100


def test_keys_of_one_day_sort_together_and_after_earlier_days() -> None:
    # What keeps the index's B-tree growing at its end: a later day sorts after every
    # key of an earlier one, whatever the hashes.
    earlier = [
        new_blob_key(hashlib.sha256(bytes([n])).hexdigest(), date(2026, 12, 6)) for n in range(50)
    ]
    later = [
        new_blob_key(hashlib.sha256(bytes([n])).hexdigest(), date(2026, 12, 7)) for n in range(50)
    ]
    assert max(earlier) < min(later)


def _stage(store: FilesystemBlobStore, data: bytes) -> StagedBlob:
    writer = store.staging_writer()
    writer.write(data)
    return writer.finish()


def test_first_use_of_a_folder_flushes_every_folder_up_to_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed: list[Path] = []
    real = filesystem.fsync_directory

    def recording(path: Path) -> None:
        flushed.append(path)
        real(path)

    monkeypatch.setattr(filesystem, "fsync_directory", recording)
    store = FilesystemBlobStore(tmp_path / "blobs")
    first = _stage(store, b"first")
    key = new_blob_key(first.sha256, date(2026, 12, 7))
    store.commit(first, key)
    root = store.root
    leaf = (root / key).parent
    assert set(flushed) == {leaf, leaf.parent, leaf.parent.parent, leaf.parent.parent.parent, root}
    assert (root / key).read_bytes() == b"first"

    # The same folder again: only the folder that gained an entry.
    flushed.clear()
    second = _stage(store, b"second")
    other = f"{leaf.relative_to(root)}/{second.sha256}-{os.urandom(4).hex()}"
    store.commit(second, other)
    assert flushed == [leaf]
