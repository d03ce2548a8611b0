"""Rendered images and thumbnails of stored instances (PS3.18 8.3.5, 10.4.1.1.x).

Each rendered image decodes exactly one frame: the frame's stored bytes come from the byte
ranges recorded at ingest and the image attributes from the header before Pixel Data, so a
thumbnail of a 2 GB multi-frame object costs what a small one costs. Thumbnails of immutable
instances are cached in memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from dicomweb_server.errors import BadRequest, NotFound
from dicomweb_server.imaging.codecs import FrameCodecError, decode_frame
from dicomweb_server.imaging.render import RenderError, RenderParams, render_frame, thumbnail
from dicomweb_server.services import pixels
from dicomweb_server.services.archive import Archive
from dicomweb_server.services.pixels import FrameSource
from dicomweb_server.services.retrieve import describe_target

_THUMBNAIL_CACHE_BYTES = 32 * 1024 * 1024


def image_sources(
    archive: Archive, study: str, series: str | None = None, instance: str | None = None
) -> list[FrameSource]:
    """The instances with Pixel Data a rendered resource covers; 404 when there are none."""
    if instance is not None and series is not None:
        return [pixels.find_frame_source(archive, study, series, instance)]
    sources = pixels.find_image_sources(archive, study, series, instance)
    if not sources:
        raise NotFound(f"{describe_target(study, series, instance)} has no stored image to render")
    return sources


def representative(sources: Sequence[FrameSource], series: str | None) -> FrameSource:
    """The instance that stands for a study or series in a thumbnail.

    For a series, the middle image by Instance Number (the middle slice of a volume shows
    more anatomy than the first). For a study, the middle image of its first imaging series
    by Series Number: localisers come first in some studies, but a series-level choice is
    what viewers show next to it anyway.
    """
    if series is None:
        first = sources[0].instance.series_instance_uid
        sources = [s for s in sources if s.instance.series_instance_uid == first]
    return sources[len(sources) // 2]


def render(archive: Archive, source: FrameSource, number: int, params: RenderParams) -> bytes:
    """One frame (1-based) rendered to the requested image type (blocking, CPU-heavy)."""
    attributes = pixels.image_attributes(archive, source)
    pixels.check_pixel_budget(archive, attributes, frames=1)
    frame, syntax = pixels.read_frame_to_decode(archive, source, number)
    try:
        array = decode_frame(attributes, frame, syntax)
        return render_frame(attributes, array, params, frame_index=number - 1)
    except FrameCodecError as exc:
        raise BadRequest(f"cannot decode the pixel data to render it: {exc}") from exc
    except RenderError as exc:
        raise BadRequest(str(exc)) from exc


class _ThumbnailCache:
    """Bytes-bounded LRU of thumbnails keyed by (instance hash, viewport, media type).

    Stored instances never change under their hash, so an entry never goes stale; a
    replaced or deleted instance simply stops being asked for.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._size = 0
        self._items: OrderedDict[tuple[str, object, str], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, object, str]) -> bytes | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple[str, object, str], value: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._size += len(value)
            while self._size > self._capacity and self._items:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)


_thumbnails = _ThumbnailCache(_THUMBNAIL_CACHE_BYTES)


def cached_thumbnail(
    source: FrameSource, viewport: tuple[int, int] | None, media_type: str
) -> bytes | None:
    return _thumbnails.get((source.instance.sha256, viewport, media_type))


def make_thumbnail(
    archive: Archive, source: FrameSource, viewport: tuple[int, int] | None, media_type: str
) -> bytes:
    """A small rendering of the instance's first frame, cached (blocking, CPU-heavy)."""
    key = (source.instance.sha256, viewport, media_type)
    cached = _thumbnails.get(key)
    if cached is not None:
        return cached
    attributes = pixels.image_attributes(archive, source)
    pixels.check_pixel_budget(archive, attributes, frames=1)
    frame, syntax = pixels.read_frame_to_decode(archive, source, 1)
    try:
        array = decode_frame(attributes, frame, syntax)
        image = thumbnail(attributes, array, viewport, media_type)
    except FrameCodecError as exc:
        raise BadRequest(f"cannot decode the pixel data for a thumbnail: {exc}") from exc
    except RenderError as exc:
        raise BadRequest(str(exc)) from exc
    _thumbnails.put(key, image)
    return image
