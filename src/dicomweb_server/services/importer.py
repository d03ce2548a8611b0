"""Bulk import of files and folders through the same ingest path as STOW-RS."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dicomweb_server.services import store
from dicomweb_server.services.archive import Archive

BATCH = 32
READ_CHUNK = 1 << 20


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under the given files and folders, in a stable order."""
    for path in paths:
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(folder) / name
        elif path.is_file():
            yield path


def looks_like_dicom(path: Path) -> bool:
    """A PS3.10 file has "DICM" after its 128-byte preamble."""
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


@dataclass
class ImportSummary:
    stored: int = 0
    already_present: int = 0
    skipped: int = 0
    rejected: list[tuple[Path, str]] = field(default_factory=list)


def import_paths(
    archive: Archive,
    paths: Iterable[Path],
    progress: Callable[[Path], None] | None = None,
) -> ImportSummary:
    """Store every DICOM file found; non-DICOM files are skipped, not rejected."""
    summary = ImportSummary()
    batch: list[tuple[Path, store.PreparedPart]] = []

    def flush() -> None:
        store.commit_batch(archive, [part for _, part in batch])
        for source, part in batch:
            _count(summary, source, part.outcome)
        batch.clear()

    for source in iter_files(paths):
        if progress:
            progress(source)
        if not looks_like_dicom(source):
            summary.skipped += 1
            continue
        writer = archive.blobs.staging_writer()
        try:
            with source.open("rb") as handle:
                while chunk := handle.read(READ_CHUNK):
                    writer.write(chunk)
        except OSError as exc:
            writer.abort()
            summary.rejected.append((source, f"cannot read: {exc.strerror or exc}"))
            continue
        prepared = store.prepare(archive, writer.finish(), None)
        if prepared.parsed is None:
            _count(summary, source, prepared.outcome)
            continue
        batch.append((source, prepared))
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    return summary


def _count(summary: ImportSummary, source: Path, outcome: store.StoreOutcome) -> None:
    if outcome.already_present:
        summary.already_present += 1
    elif outcome.stored:
        summary.stored += 1
    else:
        reason = f"0x{outcome.failure_reason or 0:04X} {outcome.message}"
        summary.rejected.append((source, reason))
