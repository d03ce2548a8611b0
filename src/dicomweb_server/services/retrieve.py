"""WADO-RS retrieval (PS3.18 10.4): instances, metadata and bulk data, served from what ingest
recorded. Metadata requests never open a stored file; instance retrieval streams the stored
bytes unless the client asked for another transfer syntax.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pydicom

from dicomweb_server.dicom.pixel_layout import PixelLayout
from dicomweb_server.dicom.transfer_syntax import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    bulk_media_type,
)
from dicomweb_server.errors import NotAcceptable, NotFound
from dicomweb_server.imaging.transcode import can_transcode, transcode
from dicomweb_server.index import lookup
from dicomweb_server.index.lookup import InstanceRef
from dicomweb_server.services.archive import Archive

ANY_TRANSFER_SYNTAX = "*"
_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
BULK_URI_KEY = b'"BulkDataURI":"'


def describe_target(study: str, series: str | None, instance: str | None) -> str:
    """How error messages name the study, series or instance a request addresses."""
    if instance is not None:
        return f"instance {instance} of series {series} in study {study}"
    if series is not None:
        return f"series {series} in study {study}"
    return f"study {study}"


def find_instances(
    archive: Archive,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    *,
    now: bool = False,
) -> list[InstanceRef]:
    """The stored instances of a study, series or instance; 404 when there are none.

    ``now``: a look-up the event loop makes itself (:meth:`Archive.reads`).
    """
    with archive.reads(now=now) as session:
        refs = lookup.find_instances(session, study, series, instance)
    if not refs:
        raise NotFound(f"no {describe_target(study, series, instance)} is stored")
    return refs


def choose_transfer_syntax(requested: Sequence[str | None], refs: Sequence[InstanceRef]) -> str:
    """The first requested syntax every instance can be delivered in.

    ``None`` stands for a range without a transfer-syntax parameter, which means the
    default Explicit VR Little Endian (PS3.18 8.7.3.5.2); ``*`` means as stored.
    """
    for wanted in requested:
        target = EXPLICIT_VR_LITTLE_ENDIAN if wanted is None else wanted
        if target == ANY_TRANSFER_SYNTAX:
            return target
        if all(can_transcode(ref.transfer_syntax_uid, target) for ref in refs):
            return target
    wanted_text = ", ".join(w or EXPLICIT_VR_LITTLE_ENDIAN for w in requested)
    stored = ", ".join(sorted({ref.transfer_syntax_uid for ref in refs}))
    raise NotAcceptable(
        f"cannot deliver the instances in transfer syntax {wanted_text} (stored as {stored}); "
        "ask with transfer-syntax=* for the stored syntax"
    )


def delivered_syntax(ref: InstanceRef, target: str) -> str:
    return ref.transfer_syntax_uid if target == ANY_TRANSFER_SYNTAX else target


def instance_chunks(archive: Archive, ref: InstanceRef, target: str) -> Iterator[bytes]:
    """The Part 10 bytes of an instance in the target syntax; blocking, chunked."""
    if target in (ANY_TRANSFER_SYNTAX, ref.transfer_syntax_uid):
        yield from archive.blobs.iter_range(
            ref.blob_key, 0, ref.size, archive.settings.retrieve_chunk_bytes
        )
        return
    path = archive.blobs.local_path(ref.blob_key)
    budget = archive.settings.max_render_pixels
    if path is None:
        data = io.BytesIO(archive.blobs.read_range(ref.blob_key, 0, ref.size))
        yield transcode(data, target, max_pixels=budget)
    else:
        yield transcode(path, target, max_pixels=budget)


class _Collector(io.RawIOBase):
    """A write-only, non-seekable sink: zipfile then writes data descriptors after each entry,
    so the archive streams without knowing any entry's size up front."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        chunk = bytes(data)  # type: ignore[call-overload]
        self.chunks.append(chunk)
        return len(chunk)

    def take(self) -> list[bytes]:
        chunks, self.chunks = self.chunks, []
        return chunks


def zip_chunks(
    archive: Archive, refs: Sequence[InstanceRef], target: str, ready: bytes | None = None
) -> Iterator[bytes]:
    """A zip of the instances' Part 10 files (PS3.18 8.7.3.1 application/zip), streamed.

    Entries are stored uncompressed: DICOM pixel data rarely deflates well and deflating
    would cost far more CPU than the bytes it saves. Paths are study/series/instance UIDs.
    `ready` is the one instance of `refs`, already re-encoded.
    """
    sink = _Collector()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as package:
        for ref in refs:
            name = f"{ref.study_instance_uid}/{ref.series_instance_uid}/{ref.sop_instance_uid}.dcm"
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            # Zip64 must be chosen before the entry's size is known: re-encoded instances
            # can be many times their stored size.
            growth = 1 if target in (ANY_TRANSFER_SYNTAX, ref.transfer_syntax_uid) else 16
            with package.open(info, "w", force_zip64=ref.size * growth >= 2**31) as entry:
                chunks = [ready] if ready is not None else instance_chunks(archive, ref, target)
                for chunk in chunks:
                    entry.write(chunk)
                    yield from sink.take()
            yield from sink.take()
    yield from sink.take()


def metadata_json(
    archive: Archive,
    base_url: str,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> tuple[bytes, list[InstanceRef]]:
    """The metadata resource as one DICOM JSON array, assembled from stored JSON, and the
    instances it describes."""
    with archive.reads() as session:
        rows = lookup.find_metadata(session, study, series, instance)
    if not rows:
        raise NotFound(f"no {describe_target(study, series, instance)} is stored")
    body = b"[" + b",".join(data for _, data in rows) + b"]"
    # Stored BulkDataURIs are relative to the root; the key pattern cannot occur inside a
    # JSON string value (its quotes would be escaped), so a byte replace is exact.
    body = body.replace(BULK_URI_KEY, BULK_URI_KEY + base_url.encode())
    return body, [ref for ref, _ in rows]


def metadata_datasets(
    archive: Archive,
    base_url: str,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> tuple[list[dict[str, object]], list[InstanceRef]]:
    body, refs = metadata_json(archive, base_url, study, series, instance)
    data: list[dict[str, object]] = orjson.loads(body)
    return data, refs


@dataclass(frozen=True, slots=True)
class BulkPart:
    """One part of a bulk data response: where its bytes are and its media type.

    ``swap`` is the word size to byte-swap by: uncompressed bulk data is always delivered
    little-endian (PS3.18 8.7.3.3.1), so values of big-endian instances are swapped.
    ``transfer_syntax`` is what the part's bytes are in, for pixel data only.
    """

    media_type: str
    ranges: tuple[tuple[int, int], ...] = ()
    data: bytes | None = None
    swap: int = 0
    transfer_syntax: str | None = None


@dataclass(frozen=True, slots=True)
class BulkData:
    """A bulk data value; ``frames`` is the frame count when it is encapsulated Pixel Data."""

    instance: InstanceRef
    parts: list[BulkPart]
    frames: int | None = None


def _value_from_file(archive: Archive, ref: InstanceRef, path: str) -> bytes:
    """Bulk value of a deflated instance, whose file offsets mean nothing: parse the file."""
    local = archive.blobs.local_path(ref.blob_key)
    source: Path | io.BytesIO = (
        local
        if local is not None
        else io.BytesIO(archive.blobs.read_range(ref.blob_key, 0, ref.size))
    )
    dataset = pydicom.dcmread(source)
    steps = path.split("/")
    try:
        current = dataset
        while len(steps) > 1:
            sequence = current[int(steps[0], 16)].value
            current = sequence[int(steps[1])]
            steps = steps[2:]
        element = current[int(steps[0], 16)]
    except (KeyError, IndexError, ValueError) as exc:
        raise NotFound(f"no bulk data value {path}") from exc
    value = element.value
    return bytes(value) if isinstance(value, bytes | bytearray) else b""


def bulk_data(archive: Archive, study: str, series: str, instance: str, path: str) -> BulkData:
    """Locate a bulk data value recorded at ingest."""
    with archive.reads() as session:
        found = lookup.find_bulk(session, study, series, instance)
    if found is None:
        raise NotFound(f"no {describe_target(study, series, instance)} is stored")
    ref = found.instance
    is_pixel_data = path.upper() in ("7FE00010", "7FE00008", "7FE00009")
    native_syntax = EXPLICIT_VR_LITTLE_ENDIAN if is_pixel_data else None
    if found.pixel_layout_json and is_pixel_data:
        layout = PixelLayout.from_json(orjson.loads(found.pixel_layout_json))
        if layout.encapsulated and f"{layout.tag:08X}" == path.upper():
            media = bulk_media_type(ref.transfer_syntax_uid)
            parts = [
                BulkPart(media, layout.frame_ranges(index), transfer_syntax=ref.transfer_syntax_uid)
                for index in range(layout.number_of_frames)
            ]
            return BulkData(ref, parts, layout.number_of_frames)
    big_endian = ref.transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN
    for entry in orjson.loads(found.bulk_json or b"[]"):
        entry_path, vr, offset, length = entry
        if entry_path.upper() == path.upper():
            swap = _WORD_SIZES.get(vr, 0) if big_endian else 0
            part = BulkPart(
                "application/octet-stream",
                ((offset, length),),
                swap=swap,
                transfer_syntax=native_syntax,
            )
            return BulkData(ref, [part])
    if found.deflated:
        data = _value_from_file(archive, ref, path)
        return BulkData(
            ref,
            [BulkPart("application/octet-stream", data=data, transfer_syntax=native_syntax)],
        )
    raise NotFound(f"no bulk data value {path} in instance {instance}")


def bulk_chunks(archive: Archive, ref: InstanceRef, part: BulkPart) -> Iterator[bytes]:
    if part.data is not None:
        yield part.data
        return
    # Chunks are a multiple of every word size, so swapping chunk by chunk is exact.
    chunk_size = archive.settings.retrieve_chunk_bytes // 8 * 8
    for offset, length in part.ranges:
        for chunk in archive.blobs.iter_range(ref.blob_key, offset, length, chunk_size):
            if part.swap and len(chunk) % part.swap == 0:
                dtype = f"u{part.swap}"
                chunk = np.frombuffer(chunk, dtype=">" + dtype).astype("<" + dtype).tobytes()
            yield chunk


def bulk_range(
    archive: Archive, ref: InstanceRef, part: BulkPart, offset: int, size: int
) -> Iterator[bytes]:
    """Bytes ``[offset, offset + size)`` of a bulk part as delivered (after any byte swap)."""
    if part.data is not None:
        yield part.data[offset : offset + size]
        return
    swap = part.swap
    # Byte-swapping needs whole words: widen the read to word boundaries, then trim.
    start = offset - offset % swap if swap else offset
    end = offset + size
    if swap and end % swap:
        end += swap - end % swap
    chunk_size = archive.settings.retrieve_chunk_bytes // 8 * 8
    position = 0
    skip = offset - start
    remaining = size
    for file_offset, length in part.ranges:
        lo, hi = max(start, position), min(end, position + length)
        position += length
        if lo >= hi:
            continue
        read_from = file_offset + lo - (position - length)
        for chunk in archive.blobs.iter_range(ref.blob_key, read_from, hi - lo, chunk_size):
            if swap and len(chunk) % swap == 0:
                dtype = f"u{swap}"
                chunk = np.frombuffer(chunk, dtype=">" + dtype).astype("<" + dtype).tobytes()
            if skip:
                chunk, skip = chunk[skip:], max(0, skip - len(chunk))
            if len(chunk) > remaining:
                chunk = chunk[:remaining]
            remaining -= len(chunk)
            if chunk:
                yield chunk
            if remaining <= 0:
                return
