"""Rendering one image frame to JPEG, PNG or GIF for WADO-RS Rendered and Thumbnail resources.

A rendered resource (PS3.18 9.5 and 10.4.1.1.x) is the image as a viewer would show it, not
the stored sample values, so every frame goes through the grayscale or colour pipeline of
PS3.4 N.2 ("Pixel Transformation Sequence") before it is cropped, scaled and encoded:

* grayscale (MONOCHROME1/2): Modality LUT (PS3.3 C.11.1) -> VOI LUT or window (PS3.3 C.11.2)
  -> 8 bits -> Presentation LUT inversion for MONOCHROME1 or a Presentation LUT Shape of
  INVERSE (PS3.3 C.11.6);
* colour: RGB as decoded, PALETTE COLOR through its Palette Color Lookup Tables
  (PS3.3 C.7.6.3.1.5), in both cases reduced to 8 bits per sample;
* then the source image region and the viewport of PS3.18 8.3.5.1.3 ("Any Source Image Region
  parameters are applied after any Presentation State parameters. Any Viewport parameters are
  applied after any Source Image Region."), and last the encoding of the media type.

The LUT arithmetic itself is pydicom's (:func:`~pydicom.pixels.apply_modality_lut`,
:func:`~pydicom.pixels.apply_voi`, :func:`~pydicom.pixels.apply_windowing`,
:func:`~pydicom.pixels.apply_color_lut`); scaling and encoding are Pillow's. Nothing here
knows about HTTP: invalid parameters and images that cannot be rendered raise
:class:`RenderError`, which the API answers with 400 (Bad Request) as PS3.18 8.3.5.1 asks.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import Dataset
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
)

from dicomweb_server.imaging.render_params import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_THUMBNAIL_VIEWPORT,
    GIF,
    JPEG,
    MAX_UPSCALED_DIMENSION,
    PNG,
    SUPPORTED_MEDIA_TYPES,
    WINDOW_FUNCTIONS,
    RenderError,
    RenderParams,
    SourceRegion,
    parse_render_params,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_JPEG_QUALITY",
    "DEFAULT_THUMBNAIL_VIEWPORT",
    "GIF",
    "JPEG",
    "MAX_UPSCALED_DIMENSION",
    "PNG",
    "SUPPORTED_MEDIA_TYPES",
    "RenderError",
    "RenderParams",
    "SourceRegion",
    "decompression_pixel_count",
    "parse_render_params",
    "render_frame",
    "thumbnail",
]

_MONOCHROME: Final = frozenset({"MONOCHROME1", "MONOCHROME2"})
# Three-sample interpretations pydicom hands over as RGB: it converts YBR_FULL and
# YBR_FULL_422 itself (``as_rgb``), and JPEG 2000 / JPEG-LS / JPEG decoders undo
# YBR_ICT / YBR_RCT / YBR_PARTIAL_* while decoding.
_RGB_LIKE: Final = frozenset(
    {
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_ICT",
        "YBR_RCT",
        "YBR_PARTIAL_420",
        "YBR_PARTIAL_422",
    }
)
# pydicom's LUT functions raise these for malformed LUT, window or palette attributes.
_PYDICOM_ERRORS: Final = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    NotImplementedError,
    OverflowError,
)

FloatArray = npt.NDArray[np.float64]
ByteArray = npt.NDArray[np.uint8]


def decompression_pixel_count(attrs: Dataset) -> int:
    """Samples a full decode of the instance produces: Rows x Columns x Samples x Frames.

    The decompression-bomb guard compares this with its limit before anything is decoded;
    missing Samples per Pixel or Number of Frames count as 1 (a single-sample, single-frame
    image), missing Rows or Columns as 0.
    """
    rows = _int_attribute(attrs, "Rows", 0)
    columns = _int_attribute(attrs, "Columns", 0)
    samples = _int_attribute(attrs, "SamplesPerPixel", 1)
    frames = _int_attribute(attrs, "NumberOfFrames", 1)
    return rows * columns * max(samples, 1) * max(frames, 1)


def _int_attribute(attrs: Dataset, keyword: str, default: int) -> int:
    value = attrs.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def render_frame(
    attrs: Dataset, pixels: np.ndarray, params: RenderParams, *, frame_index: int = 0
) -> bytes:
    """Render one frame as PS3.18 9.5 / 10.4.1.1.x describe, with the request's parameters.

    Parameters
    ----------
    attrs : pydicom.Dataset
        The instance's attributes (Pixel Data is not needed): Photometric Interpretation,
        Bits Stored, the Modality LUT, VOI LUT, Presentation LUT Shape and Palette Color
        modules. Enhanced multi-frame objects keep rescale and window in functional groups;
        those of ``frame_index`` are used when the top level has none.
    pixels : numpy.ndarray
        One frame as pydicom's ``pixel_array`` returns it with its default ``as_rgb=True``:
        ``(rows, columns)`` for grayscale and PALETTE COLOR, ``(rows, columns, 3)`` RGB for
        every three-sample image. pydicom has already converted YBR_FULL / YBR_FULL_422 to
        RGB (and the JPEG decoders the other YBR forms); the array cannot show whether that
        happened, so it is taken as RGB whatever the Photometric Interpretation says.
    params : RenderParams
    frame_index : int
        0-based frame number, only used to pick per-frame functional groups.

    Returns
    -------
    bytes
        The encoded image: 8-bit grayscale (``L``) for MONOCHROME1/2, 8-bit ``RGB`` for
        colour (GIF: palette-quantised to 256 colours).

    Raises
    ------
    RenderError
        If the image cannot be rendered (unsupported Photometric Interpretation, array
        shape that does not match it, broken Modality LUT or palette, source region outside
        the image).
    """
    image = _presentation_values(_frame_attributes(attrs, frame_index), pixels, params.window)
    if params.source_region is not None:
        image = _crop(image, params.source_region)
    picture = Image.fromarray(np.ascontiguousarray(image))
    if params.viewport is not None:
        picture = _fit(picture, params.viewport, upscale=True)
    return _encode(picture, params.media_type, params.quality)


def thumbnail(
    attrs: Dataset,
    pixels: np.ndarray,
    viewport: tuple[int, int] | None,
    media_type: str = JPEG,
) -> bytes:
    """Render a thumbnail (PS3.18 10.4.1.1.x Retrieve Thumbnail) of one frame.

    Thumbnails use the stored presentation (no window parameter exists for them) and are
    only ever reduced: an image already inside the viewport keeps its size, so a thumbnail
    is never larger than the image it stands for. Without a viewport the bound is
    :data:`DEFAULT_THUMBNAIL_VIEWPORT` (128 x 128, the Icon Image limit of PS3.3
    C.7.6.1.1.6).

    Parameters
    ----------
    attrs, pixels
        As for :func:`render_frame`.
    viewport : tuple of (int, int) or None
        ``(vw, vh)`` bound of the thumbnail.
    media_type : str
        ``image/jpeg`` (default), ``image/png`` or ``image/gif``.

    Raises
    ------
    RenderError
        As for :func:`render_frame`, or for an unsupported media type or invalid viewport.
    """
    bound = viewport or DEFAULT_THUMBNAIL_VIEWPORT
    params = RenderParams(media_type=media_type, viewport=bound)  # validates both
    image = _presentation_values(_frame_attributes(attrs, 0), pixels, None)
    picture = _fit(Image.fromarray(np.ascontiguousarray(image)), bound, upscale=False)
    return _encode(picture, params.media_type, None)


# Functional-group sequence -> attributes it carries that the LUT pipeline reads
# (PS3.3 C.7.6.16.2.9 Pixel Value Transformation, C.7.6.16.2.10 Frame VOI LUT).
_FUNCTIONAL_GROUP_ATTRIBUTES: Final = (
    ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept", "RescaleType")),
    ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence")),
)


def _frame_attributes(attrs: Dataset, frame_index: int) -> Dataset:
    """``attrs`` with the frame's rescale and window lifted out of its functional groups.

    Enhanced multi-frame IODs (PS3.3 C.7.6.16) put Rescale and Window attributes in the
    Shared or Per-Frame Functional Groups, never at the top level, so without this an
    Enhanced CT would render without its stored window. A macro belongs in one of the two;
    should both carry it, the per-frame value is taken. The caller's data set is not
    modified.
    """
    groups: list[Dataset] = []
    for keyword, index in (
        ("SharedFunctionalGroupsSequence", 0),
        ("PerFrameFunctionalGroupsSequence", frame_index),
    ):
        sequence = attrs.get(keyword)
        if sequence and 0 <= index < len(sequence):
            groups.append(sequence[index])
    lifted: list[Any] = []
    for group in groups:
        for sequence_keyword, keywords in _FUNCTIONAL_GROUP_ATTRIBUTES:
            items = group.get(sequence_keyword)
            if items:
                lifted.extend(items[0][kw] for kw in keywords if kw in items[0])
    if not lifted:
        return attrs
    view = Dataset()
    for element in attrs.elements():  # raw: nothing unrelated is decoded (or fails to)
        if not element.tag.is_private:
            view[element.tag] = element
    if hasattr(attrs, "file_meta"):
        view.file_meta = attrs.file_meta
    implicit_vr, little_endian = attrs.original_encoding
    view.set_original_encoding(implicit_vr, little_endian, attrs.original_character_set)
    for element in lifted:
        view.add(element)
    return view


def _presentation_values(
    attrs: Dataset, pixels: np.ndarray, window: tuple[float, float, str] | None
) -> ByteArray:
    """The frame in 8-bit presentation values: ``(rows, cols)`` grey or ``(rows, cols, 3)``."""
    if pixels.size == 0:
        raise RenderError("the frame has no pixels")
    interpretation = str(attrs.get("PhotometricInterpretation") or "").strip().upper()
    if pixels.ndim == 2:
        if interpretation == "PALETTE COLOR":
            return _palette_to_rgb(attrs, pixels)
        if interpretation in _MONOCHROME or not interpretation:
            return _grayscale_to_8bit(attrs, pixels, window, interpretation)
        raise RenderError(
            f"a one-sample frame does not match Photometric Interpretation {interpretation}"
        )
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        if interpretation in _RGB_LIKE or interpretation == "PALETTE COLOR" or not interpretation:
            return _rgb_to_8bit(attrs, pixels)
        if interpretation in _MONOCHROME:
            raise RenderError("a grayscale image must be rendered one frame at a time")
        raise RenderError(f"Photometric Interpretation {interpretation} cannot be rendered")
    raise RenderError(
        f"cannot render a pixel array of shape {pixels.shape} "
        f"(Photometric Interpretation {interpretation or 'absent'}); expected one frame"
    )


def _grayscale_to_8bit(
    attrs: Dataset,
    pixels: np.ndarray,
    window: tuple[float, float, str] | None,
    interpretation: str,
) -> ByteArray:
    """PS3.4 N.2.1 grayscale pipeline, from stored values to 8-bit presentation values.

    The VOI stage maps straight onto 0..255: a window is evaluated with PS3.3 C.11.2.1.2 /
    C.11.2.1.3 for an output range of 8 bits, a VOI LUT's output is scaled by
    ``255 / (2**bits - 1)`` (bits from its LUT Descriptor), then values are rounded to the
    nearest integer and clipped. VOI precedence: the request's window, else the stored VOI LUT
    Sequence, else the first stored Window Center / Width (with the stored VOI LUT
    Function), else -- no stored VOI, or a stored one that cannot be applied -- a window
    spanning the minimum to the maximum finite modality value of the frame. NaN renders as 0.
    """
    lookup = _lookup_domain(attrs, pixels)
    if lookup is not None:
        # Every step up to 8 bits is pointwise, so evaluate it once per possible stored
        # value between the frame's minimum and maximum (a few thousand for a 12-bit CT)
        # instead of once per pixel, then index: several times faster for large frames, and
        # the same values, because the same code computes them.
        low, domain = lookup
        key = _table_key(attrs, window, interpretation, low, domain)
        table = _tables.get(key) if key is not None else None
        if table is None:
            table = _grayscale_to_8bit(attrs, domain, window, interpretation)
            if key is not None:
                _tables.put(key, table)
        offsets = pixels.astype(np.int32) - low if low else pixels
        grey: ByteArray = np.take(table.ravel(), offsets)
        return grey
    try:
        values = apply_modality_lut(pixels, attrs)
    except _PYDICOM_ERRORS as exc:
        raise RenderError(f"cannot apply the Modality LUT: {exc}") from exc
    if window is not None:
        center, width, function = window
        scaled = _window(values, center, width, WINDOW_FUNCTIONS[function])
    else:
        stored = _stored_voi(attrs, values)
        scaled = stored if stored is not None else _full_range(values)
    grey = _to_uint8(scaled)
    if interpretation == "MONOCHROME1" or _presentation_shape(attrs) == "INVERSE":
        # MONOCHROME1 is displayed inverted, and an INVERSE Presentation LUT Shape on a
        # MONOCHROME1 image *is* that inversion, not a second one (PS3.3 C.8.11.6, DX Image:
        # INVERSE "shall be used if Photometric Interpretation is MONOCHROME1").
        np.subtract(255, grey, out=grey)
    return grey


_LOOKUP_MIN_PIXELS: Final = 4096


def _lookup_domain(attrs: Dataset, pixels: np.ndarray) -> tuple[int, np.ndarray] | None:
    """The frame's stored-value range as a one-row image, when a lookup table is worth it.

    Only for integer frames of at most 16 bits with more pixels than distinct values, and
    not with a Modality LUT Sequence: the min-max fallback window is taken over the modality
    values, and only a monotonic modality transformation (rescale) maps the frame's extremes
    to the extremes over the whole range.
    """
    if pixels.dtype.kind not in "ui" or pixels.dtype.itemsize > 2 or pixels.ndim != 2:
        return None
    if pixels.size < _LOOKUP_MIN_PIXELS or attrs.get("ModalityLUTSequence"):
        return None
    low, high = int(pixels.min()), int(pixels.max())
    if high - low + 1 > pixels.size // 2:
        return None
    return low, np.arange(low, high + 1, dtype=pixels.dtype).reshape(1, -1)


class _TableCache:
    """Lookup tables already computed, by everything they were computed from (a small LRU).

    The slices of a series share rescale and window, so a viewer scrolling through one, or
    re-rendering what it showed before, finds the table of its first slice: building one
    runs the pydicom pipeline over a few thousand values, about a third of a slice's
    rendering time apart from the JPEG encoder.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self._capacity = capacity_bytes
        self._size = 0
        self._items: OrderedDict[tuple[object, ...], ByteArray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> ByteArray | None:
        with self._lock:
            table = self._items.get(key)
            if table is not None:
                self._items.move_to_end(key)
            return table

    def put(self, key: tuple[object, ...], table: ByteArray) -> None:
        table.setflags(write=False)  # shared between requests: never modified
        with self._lock:
            if key in self._items:
                return
            self._items[key] = table
            self._size += table.nbytes
            while self._size > self._capacity and self._items:
                _, dropped = self._items.popitem(last=False)
                self._size -= dropped.nbytes


_tables: Final = _TableCache(4 * 1024 * 1024)
#: The attributes the grayscale pipeline reads besides LUT sequences and the presentation
#: shape: present or not, and their values as stored.
_TABLE_INPUTS: Final = (
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
)


def _table_key(
    attrs: Dataset,
    window: tuple[float, float, str] | None,
    interpretation: str,
    low: int,
    domain: np.ndarray,
) -> tuple[object, ...] | None:
    """Every input of the grayscale pipeline over ``domain``, or None when not cacheable.

    A stored VOI LUT is data, not a few numbers: such images are not cached (a Modality
    LUT Sequence never reaches here, see :func:`_lookup_domain`). The values are taken as
    stored text, so two slices share a table only when their attributes are identical.
    """
    if attrs.get("VOILUTSequence"):
        return None
    return (
        *((keyword in attrs, repr(attrs.get(keyword))) for keyword in _TABLE_INPUTS),
        _presentation_shape(attrs),
        interpretation,
        window,
        low,
        domain.size,
        domain.dtype.str,
    )


def _presentation_shape(attrs: Dataset) -> str:
    return str(attrs.get("PresentationLUTShape") or "").strip().upper()


def _window(values: np.ndarray, center: float, width: float, function: str) -> FloatArray:
    """Evaluate a VOI window (PS3.3 C.11.2.1.2/3) with pydicom, for output 0..255.

    pydicom's :func:`~pydicom.pixels.apply_windowing` takes its output range from the data
    set's Bits Stored, Pixel Representation and rescale. Handing it a data set that
    describes an unsigned 8-bit image without rescale makes it produce presentation values
    in exactly 0..255, so no second rescaling (and rounding) is needed.
    """
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    voi.PixelRepresentation = 0
    voi.BitsStored = 8
    voi.WindowCenter = center
    voi.WindowWidth = width
    voi.VOILUTFunction = function
    return np.asarray(apply_windowing(values, voi), dtype=np.float64)


def _stored_voi(attrs: Dataset, values: np.ndarray) -> FloatArray | None:
    """The stored VOI transformation scaled to 0..255, or None when there is none usable.

    A stored VOI that pydicom rejects (a LUT whose endianness is unknown, a width below 1
    for LINEAR, ...) is skipped rather than failing the request: the image still renders,
    with the next VOI source.
    """
    sequence = attrs.get("VOILUTSequence")
    if sequence:
        try:
            bits = int(sequence[0].LUTDescriptor[2])
            if np.issubdtype(values.dtype, np.integer):
                indices = values
            else:  # rescaled to float; the LUT is indexed by integral modality values
                indices = np.rint(np.nan_to_num(values)).astype(np.int64)
            output = apply_voi(indices, attrs, 0)
            scaled: FloatArray = np.asarray(output, dtype=np.float64) * (255.0 / (2**bits - 1))
            return scaled
        except _PYDICOM_ERRORS as exc:
            logger.debug("stored VOI LUT not applied: %s", exc)
    if attrs.get("WindowCenter") is not None and attrs.get("WindowWidth") is not None:
        try:
            center = _first_number(attrs.WindowCenter)
            width = _first_number(attrs.WindowWidth)
            function = str(attrs.get("VOILUTFunction") or "LINEAR").strip().upper()
            if math.isfinite(center) and math.isfinite(width):
                return _window(values, center, width, function)
        except _PYDICOM_ERRORS as exc:
            logger.debug("stored window not applied: %s", exc)
    return None


def _first_number(value: Any) -> float:
    """The first of a multi-valued DS (PS3.3 C.11.2.1.2: values are alternative views)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return float(value)
    return float(next(iter(value)))


def _full_range(values: np.ndarray) -> FloatArray:
    """Window the frame's finite minimum..maximum onto 0..255 (LINEAR_EXACT, C.11.2.1.3.2).

    Used when no VOI is stored: like most viewers, show the whole dynamic range. A frame of
    one value renders black.
    """
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float64)
    low, high = float(finite.min()), float(finite.max())
    if not high > low:
        return np.zeros(values.shape, dtype=np.float64)
    return _window(values, (low + high) / 2, high - low, "LINEAR_EXACT")


def _to_uint8(values: FloatArray) -> ByteArray:
    rounded = np.rint(np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0))
    return np.clip(rounded, 0, 255).astype(np.uint8)


def _palette_to_rgb(attrs: Dataset, pixels: np.ndarray) -> ByteArray:
    """PALETTE COLOR through its Palette Color LUTs (PS3.3 C.7.6.3.1.5), then 8 bits.

    Entries are scaled by ``255 / (2**bits - 1)`` with bits from the LUT Descriptor (8 or 16),
    capped by the width the entries are actually stored in (some writers declare 16 but
    store bytes). An Alpha LUT is dropped: the rendered media types are opaque.
    """
    try:
        rgb = np.asarray(apply_color_lut(pixels, attrs))[..., :3]
        declared = int(attrs.RedPaletteColorLookupTableDescriptor[2])
    except _PYDICOM_ERRORS as exc:
        raise RenderError(f"cannot apply the Palette Color Lookup Table: {exc}") from exc
    bits = min(declared, rgb.dtype.itemsize * 8)
    if bits == 8:
        return rgb.astype(np.uint8)
    return _to_uint8(rgb.astype(np.float64) * (255.0 / (2**bits - 1)))


def _rgb_to_8bit(attrs: Dataset, pixels: np.ndarray) -> ByteArray:
    """RGB samples to 8 bits: ``value * 255 / (2**BitsStored - 1)``, rounded.

    8-bit RGB passes unchanged; 16- and 32-bit RGB (PS3.5 allows them) are scaled over the
    range Bits Stored can hold, not over the frame's own range, so colours keep their
    meaning. Floating-point colour data has no defined range and is refused.
    """
    if pixels.dtype.kind == "f":
        raise RenderError("floating-point colour pixel data cannot be rendered")
    bits = _int_attribute(attrs, "BitsStored", pixels.dtype.itemsize * 8)
    bits = min(max(bits, 1), pixels.dtype.itemsize * 8)
    if pixels.dtype == np.uint8 and bits == 8:
        return pixels
    return _to_uint8(pixels.astype(np.float64) * (255.0 / (2**bits - 1)))


def _crop(image: ByteArray, region: SourceRegion) -> ByteArray:
    """Apply a source image region (PS3.18 8.3.5.1.3), clipped to the image.

    A region starting outside the image leaves nothing to render and is a bad request.
    """
    rows, columns = image.shape[:2]
    if region.x >= columns or region.y >= rows:
        raise RenderError(
            f"viewport: source region starts at ({region.x}, {region.y}), "
            f"outside the {columns} x {rows} image"
        )
    width = abs(region.width) if region.width is not None else columns - region.x
    height = abs(region.height) if region.height is not None else rows - region.y
    cropped = image[
        region.y : min(rows, region.y + height), region.x : min(columns, region.x + width)
    ]
    if region.width is not None and region.width < 0:
        cropped = cropped[:, ::-1]
    if region.height is not None and region.height < 0:
        cropped = cropped[::-1]
    return cropped


def _fitted_size(
    width: int, height: int, viewport: tuple[int, int], *, upscale: bool
) -> tuple[int, int]:
    """The largest size with the image's aspect ratio that fits inside the viewport.

    Enlarging (a small region into a large viewport is how a user agent zooms) is allowed
    only with ``upscale`` and never beyond :data:`MAX_UPSCALED_DIMENSION` per side.
    """
    vw, vh = viewport
    scale = min(vw / width, vh / height)
    if scale > 1:
        scale = min(scale, max(1.0, MAX_UPSCALED_DIMENSION / max(width, height))) if upscale else 1
    return (
        min(vw, max(1, math.floor(width * scale + 0.5))),
        min(vh, max(1, math.floor(height * scale + 0.5))),
    )


def _fit(picture: Image.Image, viewport: tuple[int, int], *, upscale: bool) -> Image.Image:
    """Scale to :func:`_fitted_size`: Lanczos when shrinking (no aliasing), bilinear otherwise."""
    size = _fitted_size(picture.width, picture.height, viewport, upscale=upscale)
    if size == picture.size:
        return picture
    shrinking = size[0] < picture.width or size[1] < picture.height
    resample = Image.Resampling.LANCZOS if shrinking else Image.Resampling.BILINEAR
    return picture.resize(size, resample)


def _encode(picture: Image.Image, media_type: str, quality: int | None) -> bytes:
    """Encode with Pillow; ``quality`` only affects JPEG (PS3.18 8.3.5.1.2).

    JPEG is written without chroma subsampling (4:4:4): the usual 4:2:0 halves colour
    resolution, which smears colour flow, overlays and burned-in text in colour images.
    """
    output = io.BytesIO()
    if media_type == JPEG:
        # 4:4:4: chroma subsampling smears colour overlays, Doppler and small colour images.
        picture.save(output, format="JPEG", quality=quality or DEFAULT_JPEG_QUALITY, subsampling=0)
    elif media_type == PNG:
        picture.save(output, format="PNG")
    elif media_type == GIF:
        if picture.mode == "RGB":  # GIF holds at most 256 colours; greys fit exactly
            picture = picture.quantize(colors=256)
        picture.save(output, format="GIF")
    else:  # RenderParams already refuses these
        raise RenderError(f"cannot render to {media_type!r}")
    return output.getvalue()
