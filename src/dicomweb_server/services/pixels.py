"""Pixel data of stored instances: frames by their recorded byte ranges, and image attributes.

Frame retrieval, rendering and thumbnails all start here. A stored frame is read from the
byte ranges recorded at ingest, so frame k of a multi-GB object costs one small read whatever
k is; only decoding and encoding need the instance's image attributes, which come from the
header bytes before Pixel Data (never the whole file) and are cached per immutable instance.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import orjson
import pydicom
from pydicom.dataset import Dataset

from dicomweb_server.dicom.pixel_layout import PixelLayout
from dicomweb_server.dicom.transfer_syntax import EXPLICIT_VR_BIG_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN
from dicomweb_server.errors import BadRequest, NotFound
from dicomweb_server.index import lookup
from dicomweb_server.index.lookup import InstanceRef
from dicomweb_server.services.archive import Archive
from dicomweb_server.storage import WouldWait

_ATTRIBUTE_CACHE_SIZE = 512
_BEYOND_ANY_FRAME = 10**18
_Value = TypeVar("_Value")


@dataclass(frozen=True, slots=True)
class FrameSource:
    """What frame retrieval needs about one instance, from the index alone.

    ``layout`` is ``None`` for deflated instances, whose file offsets mean nothing.
    """

    instance: InstanceRef
    layout: PixelLayout | None
    number_of_frames: int

    @property
    def transfer_syntax(self) -> str:
        return self.instance.transfer_syntax_uid


def parse_frame_list(text: str, limit: int) -> list[int]:
    """The 1-based frame numbers of a ``{frameList}`` path segment (PS3.18 10.4.1.1.3)."""
    numbers: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not item.isascii() or not item.isdigit():
            raise BadRequest(
                f"malformed frame list {text[:100]!r}: expected frame numbers separated by "
                "commas, e.g. 1,3,5"
            )
        # A well-formed but huge number is a frame that does not exist (404 later), not a
        # malformed list; it is clipped rather than converted digit by digit.
        numbers.append(int(item) if len(item) <= 18 else _BEYOND_ANY_FRAME)
        if len(numbers) > limit:
            raise BadRequest(f"a frames request may list at most {limit} frames")
    return numbers


def find_frame_source(
    archive: Archive, study: str, series: str, instance: str, *, now: bool = False
) -> FrameSource:
    """Locate an instance's Pixel Data from the index; 404 when there is none.

    ``now``: raise :class:`WouldWait` rather than read the stored file to find it.
    """
    with archive.reads(now=now) as session:
        found = lookup.find_bulk(session, study, series, instance)
    if found is None:
        raise NotFound(f"no instance {instance} of series {series} in study {study} is stored")
    if now and not found.pixel_layout_json and found.deflated:
        raise WouldWait
    source = frame_source(archive, found)
    if source is None:
        raise NotFound(f"instance {instance} has no Pixel Data, so it has no frames")
    return source


def frame_source(archive: Archive, found: lookup.BulkRef) -> FrameSource | None:
    """The frame source of an indexed instance, ``None`` when it has no Pixel Data."""
    if found.pixel_layout_json:
        key = found.instance.blob_key
        layout = _layouts.get(key)
        if layout is None:
            layout = PixelLayout.from_json(orjson.loads(found.pixel_layout_json))
            _layouts.put(key, layout)
        return FrameSource(found.instance, layout, layout.number_of_frames)
    if found.deflated:
        dataset = read_dataset(archive, found.instance, stop_before_pixels=True)
        if _has_pixel_attributes(dataset):
            return FrameSource(found.instance, None, int(dataset.get("NumberOfFrames") or 1))
    return None


def find_image_sources(
    archive: Archive, study: str, series: str | None = None, instance: str | None = None
) -> list[FrameSource]:
    """Every instance with Pixel Data under a study, series or instance, in display order."""
    with archive.reads() as session:
        found = lookup.find_image_instances(session, study, series, instance)
    sources = [frame_source(archive, item) for item in found]
    return [source for source in sources if source is not None]


def _has_pixel_attributes(dataset: Dataset) -> bool:
    # stop_before_pixels drops Pixel Data itself; Rows and Columns tell it was there.
    return "Rows" in dataset and "Columns" in dataset


def check_frames(source: FrameSource, numbers: Sequence[int]) -> None:
    """404 for a frame number the instance does not have (PS3.18 10.4.1.1.3)."""
    for number in numbers:
        if not 1 <= number <= source.number_of_frames:
            raise NotFound(
                f"frame {number} does not exist: instance {source.instance.sop_instance_uid} "
                f"has {source.number_of_frames} frame(s), numbered from 1"
            )


def stored_frame_ranges(source: FrameSource, number: int) -> tuple[tuple[int, int], ...] | None:
    """File byte ranges holding frame `number` as stored, or ``None`` when the stored bytes of
    the frame are not a byte range (deflated files, frames that are not byte-aligned)."""
    layout = source.layout
    if layout is None or (not layout.encapsulated and layout.frame_length == 0):
        return None
    return layout.frame_ranges(number - 1)


def read_stored_frame(
    archive: Archive, source: FrameSource, number: int, *, now: bool = False
) -> bytes:
    """Frame `number` (1-based) exactly as stored: the codestream of an encapsulated frame, the
    native bytes (in the stored byte order) otherwise.

    ``now``: only from memory (:meth:`BlobStore.read_range_now`), else :class:`WouldWait`.
    """
    ranges = stored_frame_ranges(source, number)
    if now:
        if ranges is None:
            raise WouldWait  # unpacked from the whole value or the dataset: a thread's work
        pieces: list[bytes] = []
        for offset, length in ranges:
            piece = archive.blobs.read_range_now(source.instance.blob_key, offset, length)
            if piece is None:
                raise WouldWait
            pieces.append(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)
    if ranges is not None:
        key = source.instance.blob_key
        if len(ranges) == 1:
            offset, length = ranges[0]
            return archive.blobs.read_range(key, offset, length)
        return b"".join(archive.blobs.read_range(key, offset, length) for offset, length in ranges)
    from dicomweb_server.imaging.codecs import extract_unaligned_frame

    if source.layout is not None:
        layout = source.layout
        value = archive.blobs.read_range(
            source.instance.blob_key, layout.value_offset, layout.value_length
        )
        return extract_unaligned_frame(value, image_attributes(archive, source), number - 1)
    dataset = read_dataset(archive, source.instance)
    value = bytes(dataset.PixelData)
    attributes = image_attributes(archive, source)
    frame_bits = (
        int(attributes.Rows)
        * int(attributes.Columns)
        * int(attributes.get("SamplesPerPixel", 1))
        * int(attributes.BitsAllocated)
    )
    if frame_bits % 8:
        return extract_unaligned_frame(value, attributes, number - 1)
    size = frame_bits // 8
    return value[(number - 1) * size : number * size]


def read_frame_to_decode(archive: Archive, source: FrameSource, number: int) -> tuple[bytes, str]:
    """Frame `number` for a decoder, with the transfer syntax its bytes are in.

    Native big-endian frames come back little-endian (Explicit VR Little Endian): 8-bit
    Pixel Data stored as OW was byte-swapped in word pairs across the whole value, so a
    frame of odd length starts or ends mid-word and can only be swapped after reading the
    surrounding whole words.
    """
    stored = source.transfer_syntax
    layout = source.layout
    if stored != EXPLICIT_VR_BIG_ENDIAN or layout is None or layout.frame_length == 0:
        return read_stored_frame(archive, source, number), stored
    from dicomweb_server.imaging.codecs import big_endian_to_little

    attributes = image_attributes(archive, source)
    bits = int(attributes.get("BitsAllocated") or 8)
    vr = pixel_vr(archive, source)
    word = 2 if bits == 8 and vr == "OW" else max(1, bits // 8)
    ((offset, length),) = layout.frame_ranges(number - 1)
    relative = offset - layout.value_offset
    start = relative - relative % word
    end = relative + length
    end = min(end + (-end) % word, layout.value_length)
    data = archive.blobs.read_range(
        source.instance.blob_key, layout.value_offset + start, end - start
    )
    swapped = big_endian_to_little(data[: len(data) - len(data) % word], bits, vr)
    swapped += data[len(swapped) :]
    return swapped[relative - start : relative - start + length], EXPLICIT_VR_LITTLE_ENDIAN


def read_dataset(
    archive: Archive, ref: InstanceRef, *, stop_before_pixels: bool = False
) -> Dataset:
    """Parse the whole stored file (deflated instances, whose offsets mean nothing)."""
    local = archive.blobs.local_path(ref.blob_key)
    source: Path | io.BytesIO = (
        local
        if local is not None
        else io.BytesIO(archive.blobs.read_range(ref.blob_key, 0, ref.size))
    )
    return pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)


class _Cache(Generic[_Value]):
    """A small thread-safe LRU keyed by an instance's immutable blob key."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, _Value] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> _Value | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, value: _Value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_attributes: _Cache[tuple[Dataset, str]] = _Cache(_ATTRIBUTE_CACHE_SIZE)
# Parsing the frame table of a 600-frame encapsulated object costs about 0.5 ms, as much as
# serving the frame; a stored instance's table never changes, so it is parsed once.
_layouts: _Cache[PixelLayout] = _Cache(_ATTRIBUTE_CACHE_SIZE)


def image_attributes(archive: Archive, source: FrameSource) -> Dataset:
    """The instance's data set without Pixel Data, parsed from the bytes before it.

    Reading only up to the recorded Pixel Data offset keeps a multi-GB object's header parse
    as cheap as a small one's, and keeps LUTs and palettes that metadata would have turned
    into BulkDataURIs. Callers must not modify the returned data set: it is shared.
    """
    return _header(archive, source)[0]


def pixel_vr(archive: Archive, source: FrameSource) -> str:
    """The VR of the stored Pixel Data element (OB or OW), which decides how big-endian
    native data is byte-swapped (PS3.5 Section 8.2)."""
    return _header(archive, source)[1]


def _header(archive: Archive, source: FrameSource) -> tuple[Dataset, str]:
    ref = source.instance
    cached = _attributes.get(ref.blob_key)
    if cached is not None:
        return cached
    vr = "OB"
    if source.layout is None:
        dataset = read_dataset(archive, ref, stop_before_pixels=True)
    else:
        offset = source.layout.value_offset
        header = archive.blobs.read_range(ref.blob_key, 0, offset)
        dataset = pydicom.dcmread(io.BytesIO(header), stop_before_pixels=True, force=True)
        # Explicit VR long form: tag (4), VR (2), reserved (2), length (4), then the value.
        candidate = header[offset - 8 : offset - 6]
        if candidate in (b"OB", b"OW", b"OF", b"OD"):
            vr = candidate.decode()
        elif int(dataset.get("BitsAllocated") or 8) > 8:
            vr = "OW"  # implicit VR: Pixel Data is OW unless 8 bits (PS3.5 Section A.1)
    _attributes.put(ref.blob_key, (dataset, vr))
    return dataset, vr


def pixel_count(attributes: Dataset, frames: int | None = None) -> int:
    """Samples a decode produces: Rows x Columns x Samples per Pixel x frames decoded
    (all of the instance's frames unless `frames` is given)."""
    if frames is None:
        frames = int(attributes.get("NumberOfFrames") or 1)
    return (
        int(attributes.get("Rows") or 0)
        * int(attributes.get("Columns") or 0)
        * int(attributes.get("SamplesPerPixel") or 1)
        * frames
    )


def check_pixel_budget(archive: Archive, attributes: Dataset, frames: int | None = None) -> None:
    """Refuse a decode larger than the configured guard, before any allocation.

    Compressed pixel data can claim far more pixels than its bytes hold (a decompression
    bomb), so the claim is checked against ``DICOMWEB_MAX_RENDER_PIXELS`` first.
    """
    count = pixel_count(attributes, frames)
    limit = archive.settings.max_render_pixels
    if count > limit:
        raise BadRequest(
            f"decoding this would produce {count} pixel samples, more than this server "
            f"decodes at once ({limit}, DICOMWEB_MAX_RENDER_PIXELS); retrieve it as stored "
            "instead"
        )
