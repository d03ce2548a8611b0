"""The query parameters of WADO-RS Rendered and Thumbnail resources (PS3.18 8.3.5.1).

Validation lives apart from the pipeline (``imaging/render.py``) because it is HTTP-facing:
everything a client can get wrong is found here, before any pixel is decoded, and raised as
:class:`RenderError`, which the API answers with 400 (Bad Request).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

JPEG: Final = "image/jpeg"
PNG: Final = "image/png"
GIF: Final = "image/gif"
#: Rendered media types for single-frame images (PS3.18 8.7.4); JPEG is the default.
SUPPORTED_MEDIA_TYPES: Final = frozenset({JPEG, PNG, GIF})

#: JPEG quality when the request has no ``quality`` parameter (Orthanc's DICOMweb plugin uses
#: the same): high enough that windowed soft tissue shows no blocking.
DEFAULT_JPEG_QUALITY: Final = 90

#: Thumbnail size bound when the request gives no viewport. PS3.3 C.7.6.1.1.6 limits an Icon
#: Image -- DICOM's own thumbnail -- to 128 rows by 128 columns, so that is what a thumbnail
#: without a viewport gets (OHIF asks ``viewport=256,256`` explicitly).
DEFAULT_THUMBNAIL_VIEWPORT: Final = (128, 128)

#: A viewport larger than the (region of the) image enlarges it, but never beyond this many
#: pixels per side: a request such as ``viewport=100000,100000`` must not allocate gigabytes.
#: Shrinking and original size are never limited (the decompression-bomb guard bounds those).
MAX_UPSCALED_DIMENSION: Final = 4096

# PS3.18 8.3.5.1.4 ``window`` function keywords -> PS3.3 C.11.2.1.3 VOI LUT Function values.
WINDOW_FUNCTIONS: Final = {
    "linear": "LINEAR",
    "linear-exact": "LINEAR_EXACT",
    "sigmoid": "SIGMOID",
}
_ANNOTATION_KEYWORDS: Final = frozenset({"patient", "technique"})
_ICC_PROFILE_VALUES: Final = frozenset({"no", "yes", "srgb", "adobergb", "rommrgb"})


class RenderError(ValueError):
    """A rendering parameter is invalid or unsupported, or the image cannot be rendered.

    PS3.18 8.3.5.1 answers both with 400 (Bad Request) and a message; the message of this
    exception is written for that response body.
    """


@dataclass(frozen=True, slots=True)
class SourceRegion:
    """The ``sx,sy,sw,sh`` part of a six-value ``viewport`` (PS3.18 8.3.5.1.3).

    Attributes
    ----------
    x, y : int
        Column and row of the region's top-left pixel (``sx``, ``sy``; default 0).
    width, height : int or None
        Extent in pixels (``sw``, ``sh``); ``None`` reaches the right / bottom edge of the
        image. A negative extent selects ``abs(extent)`` pixels from ``x`` / ``y`` and
        mirrors them (negative ``sw`` flips horizontally, negative ``sh`` vertically), the
        reading Orthanc's DICOMweb plugin also implements.
    """

    x: int = 0
    y: int = 0
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        if self.x < 0 or self.y < 0:
            raise RenderError("viewport: sx and sy must not be negative")
        if self.width == 0 or self.height == 0:
            raise RenderError("viewport: sw and sh must not be zero")


@dataclass(frozen=True, slots=True)
class RenderParams:
    """Validated query parameters of a Retrieve Rendered request (PS3.18 Table 8.3.5-1).

    Construction validates, so parameters built in code are as safe as parsed ones; invalid
    values raise :class:`RenderError`.

    Attributes
    ----------
    media_type : str
        ``image/jpeg`` (the default), ``image/png`` or ``image/gif``.
    window : tuple of (float, float, str) or None
        ``(center, width, function)`` with function ``linear``, ``linear-exact`` or
        ``sigmoid`` (PS3.18 8.3.5.1.4). It replaces the stored VOI of grayscale images and is
        ignored for colour images, which have no VOI stage (PS3.4 N.2).
    viewport : tuple of (int, int) or None
        ``(vw, vh)``: the rendered image is scaled to fit inside it, aspect ratio kept.
    source_region : SourceRegion or None
        The ``sx,sy,sw,sh`` of a six-value viewport: the part of the frame to render.
    quality : int or None
        JPEG quality 1..100; PS3.18 8.3.5.1.2 leaves it without effect on lossless types.
    annotation : tuple of str
        Requested annotations (``patient``, ``technique``). None are burned in; see
        :meth:`notices`.
    iccprofile : str or None
        Requested ICC profile handling (PS3.18 8.3.5.1.5). No profile is embedded; see
        :meth:`notices`.
    """

    media_type: str = JPEG
    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    source_region: SourceRegion | None = None
    quality: int | None = None
    annotation: tuple[str, ...] = field(default=())
    iccprofile: str | None = None

    def __post_init__(self) -> None:
        if self.media_type not in SUPPORTED_MEDIA_TYPES:
            raise RenderError(
                f"cannot render to {self.media_type!r}; supported: "
                + ", ".join(sorted(SUPPORTED_MEDIA_TYPES))
            )
        if self.window is not None:
            _check_window(*self.window)
        if self.viewport is not None:
            vw, vh = self.viewport
            if vw < 1 or vh < 1:
                raise RenderError("viewport: vw and vh must be positive integers")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise RenderError(f"quality must be an integer from 1 to 100, not {self.quality}")
        for keyword in self.annotation:
            if keyword not in _ANNOTATION_KEYWORDS:
                raise RenderError(
                    f"annotation: unknown keyword {keyword!r} (expected patient and/or technique)"
                )
        if self.iccprofile is not None and self.iccprofile not in _ICC_PROFILE_VALUES:
            raise RenderError(
                f"iccprofile: unknown value {self.iccprofile!r} (expected one of "
                + ", ".join(sorted(_ICC_PROFILE_VALUES))
                + ")"
            )

    def notices(self) -> tuple[str, ...]:
        """Requested features the rendering does not apply, for a ``Warning`` header.

        PS3.18 8.3.5.1 lets an origin server leave parameters unsupported; telling the user
        agent beats silently returning an image without the annotations it asked for.
        """
        notes: list[str] = []
        if self.annotation:
            notes.append(f"annotation={','.join(self.annotation)} is not rendered")
        if self.iccprofile not in (None, "no"):
            notes.append(f"iccprofile={self.iccprofile} is not applied; no ICC profile embedded")
        return tuple(notes)


def _check_window(center: float, width: float, function: str) -> None:
    """Apply PS3.3 C.11.2.1.2.1 / C.11.2.1.3 width rules to a requested window."""
    if function not in WINDOW_FUNCTIONS:
        raise RenderError(
            f"window: unknown function {function!r} (expected linear, linear-exact or sigmoid)"
        )
    if not (math.isfinite(center) and math.isfinite(width)):
        raise RenderError("window: center and width must be finite numbers")
    if function == "linear" and width < 1:
        raise RenderError("window: width must be at least 1 for the linear function")
    if width <= 0:
        raise RenderError(f"window: width must be greater than 0 for the {function} function")


def parse_render_params(
    query: Mapping[str, str] | Iterable[tuple[str, str]], media_type: str = JPEG
) -> RenderParams:
    """Validate the rendering query parameters of PS3.18 8.3.5.1.

    Parameters
    ----------
    query : mapping or iterable of (key, value) pairs
        The request's query parameters. Pass pairs to keep repeated keys: ``annotation`` may
        repeat (values are merged), the other rendering parameters may not. Keys this
        function does not know (``accept``, ``charset``, vendor keys) are ignored, because
        whether they are acceptable is the API's decision.
    media_type : str
        The negotiated rendered media type; parameters such as ``;q=`` are ignored.

    Returns
    -------
    RenderParams

    Raises
    ------
    RenderError
        With a message naming the offending parameter.
    """
    pairs = query.items() if isinstance(query, Mapping) else query
    single: dict[str, str] = {}
    annotation: list[str] = []
    for key, value in pairs:
        if key == "annotation":
            annotation.extend(_keywords(value, "annotation"))
        elif key in ("window", "viewport", "quality", "iccprofile"):
            if key in single:
                raise RenderError(f"the {key} query parameter may be given only once")
            single[key] = value
    viewport, region = _parse_viewport(single["viewport"]) if "viewport" in single else (None, None)
    iccprofile = single.get("iccprofile")
    return RenderParams(
        media_type=media_type.split(";", 1)[0].strip().lower(),
        window=_parse_window(single["window"]) if "window" in single else None,
        viewport=viewport,
        source_region=region,
        quality=_parse_int(single["quality"], "quality") if "quality" in single else None,
        annotation=tuple(dict.fromkeys(annotation)),
        iccprofile=iccprofile.strip().lower() if iccprofile is not None else None,
    )


def _keywords(value: str, name: str) -> list[str]:
    words = [word.strip().lower() for word in value.split(",")]
    if not all(words):
        raise RenderError(f"{name}: empty keyword in {value!r}")
    return words


def _parse_int(text: str, name: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise RenderError(f"{name}: {text!r} is not an integer") from None


def _parse_window(value: str) -> tuple[float, float, str]:
    """``window=center,width,function`` (PS3.18 8.3.5.1.4): exactly three values."""
    parts = [part.strip() for part in value.split(",")]
    if len(parts) != 3:
        raise RenderError(
            f"window must be center,width,function (3 comma-separated values), not {value!r}"
        )
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise RenderError(f"window: center and width must be numbers, not {value!r}") from None
    function = parts[2].lower()
    _check_window(center, width, function)
    return center, width, function


def _parse_viewport(value: str) -> tuple[tuple[int, int], SourceRegion | None]:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3); empty sx..sh take defaults."""
    parts = [part.strip() for part in value.split(",")]
    if len(parts) not in (2, 6):
        raise RenderError(f"viewport must have 2 or 6 comma-separated values, not {value!r}")
    vw, vh = (_parse_int(part, "viewport") for part in parts[:2])
    if vw < 1 or vh < 1:
        raise RenderError("viewport: vw and vh must be positive integers")
    if len(parts) == 2 or not any(parts[2:]):
        return (vw, vh), None
    sx, sy, sw, sh = (_parse_int(part, "viewport") if part else None for part in parts[2:])
    return (vw, vh), SourceRegion(x=sx or 0, y=sy or 0, width=sw, height=sh)
