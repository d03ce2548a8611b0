"""Tests of the rendering layer: LUT pipeline, source region, viewport, encoding, parameters.

Every bundled pydicom test file that pydicom can decode is rendered and compared with an
independent computation of the expected 8-bit image from pydicom's own LUT functions and
the standard's formulas (PS3.3 C.11), through lossless PNG so the comparison is exact up to
rounding. Cases the bundled files lack (VOI LUT Sequence, Modality LUT Sequence, float
pixels, 16-bit palettes, enhanced functional groups) use data sets generated here.
"""

from __future__ import annotations

import copy
import functools
import io
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.data import get_testdata_files
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    apply_windowing,
)
from pydicom.sequence import Sequence

from dicomweb_server.imaging.render import (
    DEFAULT_THUMBNAIL_VIEWPORT,
    GIF,
    JPEG,
    MAX_UPSCALED_DIMENSION,
    PNG,
    RenderError,
    RenderParams,
    SourceRegion,
    decompression_pixel_count,
    parse_render_params,
    render_frame,
    thumbnail,
)

Array = npt.NDArray[Any]


# --------------------------------------------------------------------------- helpers


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _png(attrs: Dataset, pixels: Array, **params: Any) -> Image.Image:
    return _decode(render_frame(attrs, pixels, RenderParams(media_type=PNG, **params)))


def _as_array(image: Image.Image) -> Array:
    return np.asarray(image).astype(np.int16)


def _to_uint8(values: Array) -> Array:
    rounded: Array = np.rint(np.nan_to_num(values, nan=0.0))
    return np.clip(rounded, 0, 255).astype(np.uint8)


def _voi_output_range(ds: Dataset) -> tuple[float, float]:
    """The output range pydicom's windowing uses for ``ds`` (PS3.3 C.11.2.1.2)."""
    if ds.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1)
    elif ds.PixelRepresentation == 0:
        low, high = 0.0, float(2**ds.BitsStored - 1)
    else:
        low, high = float(-(2 ** (ds.BitsStored - 1))), float(2 ** (ds.BitsStored - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = low * slope + intercept, high * slope + intercept
    return low, high


def _min_max_scaled(values: Array) -> Array:
    finite = values[np.isfinite(values)]
    low, high = float(finite.min()), float(finite.max())
    if high == low:
        return np.zeros(values.shape)
    return (values.astype(np.float64) - low) / (high - low) * 255


def _expected_grey(
    ds: Dataset, pixels: Array, window: tuple[float, float, str] | None = None
) -> Array:
    """The documented grayscale pipeline computed with pydicom on the real data set."""
    ds = copy.deepcopy(ds)
    values = apply_modality_lut(pixels, ds)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window[0], window[1]
        ds.VOILUTFunction = window[2].upper().replace("-", "_")
        if "VOILUTSequence" in ds:
            del ds.VOILUTSequence
        low, high = _voi_output_range(ds)
        scaled = (apply_windowing(values, ds) - low) / (high - low) * 255
    elif ds.get("VOILUTSequence"):
        bits = ds.VOILUTSequence[0].LUTDescriptor[2]
        scaled = apply_voi_lut(values, ds).astype(np.float64) * 255 / (2**bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            low, high = _voi_output_range(ds)
            scaled = (apply_voi_lut(values, ds) - low) / (high - low) * 255
        except ValueError:  # a stored window pydicom refuses: the full range is shown
            scaled = _min_max_scaled(values)
    else:
        scaled = _min_max_scaled(values)
    grey = _to_uint8(scaled)
    if ds.PhotometricInterpretation == "MONOCHROME1" or ds.get("PresentationLUTShape") == (
        "INVERSE"
    ):
        grey = 255 - grey
    return grey


def _expected_colour(ds: Dataset, pixels: Array) -> Array:
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)[..., :3]
        bits = 8 if rgb.dtype == np.uint8 else ds.RedPaletteColorLookupTableDescriptor[2]
        return _to_uint8(rgb.astype(np.float64) * 255 / (2**bits - 1))
    if pixels.dtype == np.uint8:
        return pixels
    return _to_uint8(pixels.astype(np.float64) * 255 / (2**ds.BitsStored - 1))


def _expected(ds: Dataset, pixels: Array) -> Array:
    if ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2"):
        return _expected_grey(ds, pixels)
    return _expected_colour(ds, pixels)


def _is_grey(ds: Dataset) -> bool:
    return str(ds.PhotometricInterpretation) in ("MONOCHROME1", "MONOCHROME2")


@functools.cache
def _bundled_images() -> dict[str, Path]:
    """Bundled test files with pixel data pydicom decodes, by unique short name."""
    found: dict[str, Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(get_testdata_files()):
            path = Path(name)
            try:
                ds = pydicom.dcmread(path)
                if "PixelData" not in ds:
                    continue
                ds.pixel_array  # noqa: B018 - decodability is the filter
            except Exception:  # unreadable or undecodable here (missing codec, broken file)
                continue
            found[name.split("test_files/")[-1]] = path
    return found


@functools.cache
def _load(name: str) -> tuple[Dataset, Array]:
    """Data set and its first frame."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(_bundled_images()[name])
        pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        pixels = pixels[0]
    pixels.setflags(write=False)
    return ds, pixels


BUNDLED = sorted(_bundled_images())


def test_bundled_files_cover_the_interesting_cases() -> None:
    """Guard the parametrised tests below against silently testing nothing."""
    interpretations = {str(_load(name)[0].PhotometricInterpretation) for name in BUNDLED}
    assert {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"} <= interpretations
    assert "PALETTE COLOR" in interpretations
    bits = {int(_load(name)[0].BitsAllocated) for name in BUNDLED}
    assert {1, 8, 16, 32} <= bits
    assert any(int(_load(name)[0].get("NumberOfFrames") or 1) > 1 for name in BUNDLED)
    assert any(_load(name)[0].get("PixelRepresentation") == 1 for name in BUNDLED)


# --------------------------------------------------------------------------- bundled files


@pytest.mark.parametrize("name", BUNDLED)
def test_default_rendering_matches_the_pipeline(name: str) -> None:
    ds, pixels = _load(name)
    image = _png(ds, pixels)
    assert image.size == (ds.Columns, ds.Rows)
    assert image.mode == ("L" if _is_grey(ds) else "RGB")
    difference = np.abs(_as_array(image) - _expected(ds, pixels).astype(np.int16))
    assert difference.max() <= 1


@pytest.mark.parametrize("name", BUNDLED)
def test_window_parameter(name: str) -> None:
    ds, pixels = _load(name)
    values = apply_modality_lut(pixels, ds) if _is_grey(ds) else pixels
    center = float(np.mean(values))
    width = max(1.0, float(np.ptp(values)) / 2)
    window = (center, width, "linear")
    image = _png(ds, pixels, window=window)
    # colour images have no VOI stage: the window is ignored
    expected = _expected_grey(ds, pixels, window) if _is_grey(ds) else _as_array(_png(ds, pixels))
    assert image.size == (ds.Columns, ds.Rows)
    assert np.abs(_as_array(image) - expected.astype(np.int16)).max() <= 1


@pytest.mark.parametrize("name", BUNDLED)
def test_viewport_parameter(name: str) -> None:
    ds, pixels = _load(name)
    columns, rows = int(ds.Columns), int(ds.Rows)
    viewport = (max(1, columns // 2), max(1, (rows * 2) // 3))
    scale = min(viewport[0] / columns, viewport[1] / rows)
    size = (max(1, math.floor(columns * scale + 0.5)), max(1, math.floor(rows * scale + 0.5)))
    image = _png(ds, pixels, viewport=viewport)
    assert image.size == size
    assert image.width <= viewport[0] and image.height <= viewport[1]
    assert image.mode == ("L" if _is_grey(ds) else "RGB")
    expected = Image.fromarray(np.ascontiguousarray(_expected(ds, pixels)))
    expected = expected.resize(size, Image.Resampling.LANCZOS)
    assert np.abs(_as_array(image) - _as_array(expected)).max() <= 2


@pytest.mark.parametrize("name", BUNDLED)
def test_jpeg_and_gif_encodings(name: str) -> None:
    ds, pixels = _load(name)
    reference = _as_array(_png(ds, pixels))
    jpeg = _decode(render_frame(ds, pixels, RenderParams(media_type=JPEG)))
    assert jpeg.format == "JPEG"
    assert jpeg.size == (ds.Columns, ds.Rows)
    assert jpeg.mode == ("L" if _is_grey(ds) else "RGB")
    assert np.abs(_as_array(jpeg) - reference).mean() < 4
    gif = _decode(render_frame(ds, pixels, RenderParams(media_type=GIF)))
    assert gif.format == "GIF"
    assert gif.size == (ds.Columns, ds.Rows)
    if _is_grey(ds):  # 256 greys fit a GIF palette: lossless
        assert np.array_equal(_as_array(gif.convert("L")), reference)
    else:
        assert np.abs(_as_array(gif.convert("RGB")) - reference).mean() < 12


def test_jpeg_quality_changes_the_encoding() -> None:
    ds, pixels = _load("CT_small.dcm")
    low = render_frame(ds, pixels, RenderParams(quality=10))
    high = render_frame(ds, pixels, RenderParams(quality=100))
    assert len(low) < len(high)
    assert render_frame(ds, pixels, RenderParams()) == render_frame(
        ds, pixels, RenderParams(quality=90)
    )
    # PS3.18 8.3.5.1.2: quality has no effect on lossless PNG
    assert render_frame(ds, pixels, RenderParams(media_type=PNG, quality=10)) == render_frame(
        ds, pixels, RenderParams(media_type=PNG)
    )


def test_rendering_leaves_the_attributes_untouched() -> None:
    ds, pixels = _load("CT_small.dcm")
    before = copy.deepcopy(ds)
    render_frame(ds, pixels, RenderParams(window=(40.0, 400.0, "sigmoid")))
    assert ds == before


# --------------------------------------------------------------------------- generated data


def _grey_dataset(
    pixels: Array,
    *,
    interpretation: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **attributes: Any,
) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = interpretation
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _ramp(rows: int = 4, columns: int = 8, dtype: str = "int16") -> Array:
    return np.arange(rows * columns, dtype=dtype).reshape(rows, columns)


def _linear(x: Array, center: float, width: float) -> Array:
    """PS3.3 C.11.2.1.2.1 for an 8-bit output range."""
    return np.where(
        x <= center - 0.5 - (width - 1) / 2,
        0.0,
        np.where(
            x > center - 0.5 + (width - 1) / 2,
            255.0,
            ((x - (center - 0.5)) / (width - 1) + 0.5) * 255,
        ),
    )


def _linear_exact(x: Array, center: float, width: float) -> Array:
    """PS3.3 C.11.2.1.3.2 for an 8-bit output range."""
    return np.where(
        x <= center - width / 2,
        0.0,
        np.where(x > center + width / 2, 255.0, ((x - center) / width + 0.5) * 255),
    )


def _sigmoid(x: Array, center: float, width: float) -> Array:
    """PS3.3 C.11.2.1.3.1 for an 8-bit output range."""
    return 255.0 / (1 + np.exp(-4 * (x - center) / width))


@pytest.mark.parametrize(
    ("function", "formula"),
    [("linear", _linear), ("linear-exact", _linear_exact), ("sigmoid", _sigmoid)],
)
def test_window_functions_follow_ps3_3(function: str, formula: Any) -> None:
    pixels = _ramp()
    ds = _grey_dataset(pixels, RescaleSlope=1, RescaleIntercept=-3)
    rendered = _as_array(_png(ds, pixels, window=(10.0, 4.0, function)))
    expected = formula(pixels.astype(np.float64) - 3, 10.0, 4.0)
    assert np.abs(rendered - np.rint(expected)).max() <= 1


def test_window_functions_differ_where_the_formulas_do() -> None:
    pixels = _ramp()
    ds = _grey_dataset(pixels)
    by_function = {
        function: _as_array(_png(ds, pixels, window=(10.0, 4.0, function)))
        for function in ("linear", "linear-exact", "sigmoid")
    }
    # x = 9, 10, 11, 12 with center 10, width 4:
    assert by_function["linear"][1, 1:5].tolist() == [85, 170, 255, 255]
    assert by_function["linear-exact"][1, 1:5].tolist() == [64, 128, 191, 255]
    assert by_function["sigmoid"][1, 1:5].tolist() == [
        round(255 / (1 + math.exp(-4 * (x - 10) / 4))) for x in (9, 10, 11, 12)
    ]


def test_stored_voi_lut_sequence_is_applied_and_preferred() -> None:
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)) % 4096
    lut = [round(math.sqrt(i / 4095) * 4095) for i in range(4096)]
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = lut
    ds = _grey_dataset(
        pixels, bits_stored=12, VOILUTSequence=Sequence([item]), WindowCenter=100, WindowWidth=10
    )
    rendered = _as_array(_png(ds, pixels))
    expected = np.rint(np.asarray(lut)[pixels] * 255 / 4095)
    assert np.abs(rendered - expected).max() <= 1
    assert np.abs(rendered - _expected_grey(ds, pixels)).max() <= 1
    # an explicit window replaces the stored VOI LUT
    windowed = _as_array(_png(ds, pixels, window=(2048.0, 4096.0, "linear")))
    assert np.abs(windowed - np.rint(_linear(pixels.astype(float), 2048, 4096))).max() <= 1


def test_modality_lut_sequence_then_full_range() -> None:
    pixels = _ramp(8, 32, "uint16")
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.LUTData = [1000 + 3 * i for i in range(256)]
    item.ModalityLUTType = "US"
    ds = _grey_dataset(pixels, bits_stored=8, ModalityLUTSequence=Sequence([item]))
    rendered = _as_array(_png(ds, pixels))
    transformed = 1000 + 3 * pixels.astype(float)
    assert np.abs(rendered - np.rint(_min_max_scaled(transformed))).max() <= 1
    assert rendered.min() == 0 and rendered.max() == 255


def test_rescaled_window() -> None:
    """The window is in modality (e.g. Hounsfield) units, after Rescale (PS3.3 C.11.2.1.2)."""
    pixels = _ramp(16, 16, "uint16") * 10
    ds = _grey_dataset(pixels, RescaleSlope=2, RescaleIntercept=-1024)
    rendered = _as_array(_png(ds, pixels, window=(-500.0, 1000.0, "linear")))
    expected = _linear(pixels * 2.0 - 1024, -500, 1000)
    assert np.abs(rendered - np.rint(expected)).max() <= 1


def test_float_pixels_with_nan_and_infinity() -> None:
    pixels = np.linspace(-1.5, 2.5, 32, dtype=np.float32).reshape(4, 8)
    pixels[0, 0] = np.nan
    pixels[0, 1] = np.inf
    pixels[0, 2] = -np.inf
    ds = _grey_dataset(pixels)
    rendered = _as_array(_png(ds, pixels))
    expected = np.rint(_min_max_scaled(pixels.astype(np.float64)))
    assert np.abs(rendered[1:] - expected[1:]).max() <= 1
    assert np.abs(rendered[0, 3:] - expected[0, 3:]).max() <= 1
    assert rendered.min() == 0 and rendered.max() == 255
    assert rendered[0, :3].tolist() == [0, 255, 0]  # NaN, +inf, -inf


def test_32_bit_signed_pixels() -> None:
    pixels = (np.arange(-50, 50, dtype=np.int32) * 40_000_000).reshape(10, 10)
    ds = _grey_dataset(pixels)
    rendered = _as_array(_png(ds, pixels))
    assert np.abs(rendered - np.rint(_min_max_scaled(pixels))).max() <= 1


def test_constant_frame_renders_black() -> None:
    pixels = np.full((5, 7), 1234, dtype=np.uint16)
    assert _as_array(_png(_grey_dataset(pixels), pixels)).max() == 0


@pytest.mark.parametrize(
    ("interpretation", "shape", "inverted"),
    [
        ("MONOCHROME2", None, False),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME2", "INVERSE", True),
        ("MONOCHROME1", None, True),
        ("MONOCHROME1", "INVERSE", True),  # the shape states the inversion, not a second one
        ("MONOCHROME1", "IDENTITY", True),
    ],
)
def test_presentation_inversion(interpretation: str, shape: str | None, inverted: bool) -> None:
    pixels = _ramp(4, 64, "uint8")
    ds = _grey_dataset(pixels, interpretation=interpretation)
    if shape:
        ds.PresentationLUTShape = shape
    identity = np.rint(_min_max_scaled(pixels))
    rendered = _as_array(_png(ds, pixels))
    assert np.abs(rendered - (255 - identity if inverted else identity)).max() <= 1
    windowed = _as_array(_png(ds, pixels, window=(128.0, 256.0, "linear-exact")))
    expected = np.rint(_linear_exact(pixels.astype(float), 128, 256))
    assert np.abs(windowed - (255 - expected if inverted else expected)).max() <= 1


def test_stored_window_that_pydicom_refuses_falls_back_to_the_full_range() -> None:
    pixels = _ramp(4, 8, "uint16")
    ds = _grey_dataset(pixels, WindowCenter=10, WindowWidth=0)
    assert np.abs(_as_array(_png(ds, pixels)) - np.rint(_min_max_scaled(pixels))).max() <= 1


def test_multi_valued_stored_window_uses_the_first() -> None:
    pixels = _ramp(4, 8, "uint16")
    ds = _grey_dataset(pixels, WindowCenter=[10, 20], WindowWidth=[4, 40])
    rendered = _as_array(_png(ds, pixels))
    assert np.abs(rendered - np.rint(_linear(pixels.astype(float), 10, 4))).max() <= 1


def test_enhanced_functional_groups_supply_rescale_and_window() -> None:
    pixels = _ramp(4, 8, "uint16")

    def group(center: float, width: float) -> Dataset:
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        item = Dataset()
        item.FrameVOILUTSequence = Sequence([voi])
        return item

    rescale = Dataset()
    rescale.RescaleSlope, rescale.RescaleIntercept = 1, 100
    shared = group(110, 4)
    shared.PixelValueTransformationSequence = Sequence([rescale])
    ds = _grey_dataset(
        pixels,
        NumberOfFrames=2,
        SharedFunctionalGroupsSequence=Sequence([shared]),
        PerFrameFunctionalGroupsSequence=Sequence([Dataset(), group(120, 8)]),
    )
    first = _as_array(_decode(render_frame(ds, pixels, RenderParams(media_type=PNG))))
    second = _as_array(
        _decode(render_frame(ds, pixels, RenderParams(media_type=PNG), frame_index=1))
    )
    assert np.abs(first - np.rint(_linear(pixels + 100.0, 110, 4))).max() <= 1
    assert np.abs(second - np.rint(_linear(pixels + 100.0, 120, 8))).max() <= 1
    assert "WindowCenter" not in ds


def test_sixteen_bit_palette() -> None:
    pixels = _ramp(4, 64, "uint8")
    ds = _grey_dataset(pixels, interpretation="PALETTE COLOR")
    ramp = np.arange(256, dtype=np.uint16)
    channels = {"Red": ramp * 257, "Green": (255 - ramp) * 257, "Blue": np.full(256, 0x8000)}
    for colour, values in channels.items():
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", values.astype("<u2").tobytes())
    rendered = _as_array(_png(ds, pixels))
    assert rendered.shape == (4, 64, 3)
    assert np.array_equal(rendered[..., 0], pixels)
    assert np.array_equal(rendered[..., 1], 255 - pixels)
    assert np.all(rendered[..., 2] == 128)


def test_colour_frame_ignores_the_window() -> None:
    ds, pixels = _load("SC_rgb_rle.dcm")
    assert render_frame(ds, pixels, RenderParams(window=(1.0, 1.0, "linear"))) == render_frame(
        ds, pixels, RenderParams()
    )


# --------------------------------------------------------------------------- region, viewport


@pytest.fixture
def gradient() -> tuple[Dataset, Array]:
    """An 8-bit image whose default rendering is the identity (it spans 0..255)."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(30, 40), dtype=np.uint8)
    pixels[0, 0], pixels[0, 1] = 0, 255
    return _grey_dataset(pixels), pixels


def test_identity_fixture(gradient: tuple[Dataset, Array]) -> None:
    ds, pixels = gradient
    assert np.array_equal(np.asarray(_png(ds, pixels)), pixels)


@pytest.mark.parametrize(
    ("viewport", "expected"),
    [
        ("10,8,5,7,10,8", lambda a: a[7:15, 5:15]),
        ("10,8,5,7,-10,8", lambda a: a[7:15, 5:15][:, ::-1]),
        ("10,8,5,7,10,-8", lambda a: a[7:15, 5:15][::-1]),
        ("10,8,5,7,-10,-8", lambda a: a[7:15, 5:15][::-1, ::-1]),
        ("40,30,0,0,-40,30", lambda a: a[:, ::-1]),
        ("5,6,35,24,,", lambda a: a[24:, 35:]),  # empty sw/sh: to the edges
        ("5,6,35,24,100,100", lambda a: a[24:, 35:]),  # clipped to the image
        ("40,30,,,,", lambda a: a),
    ],
)
def test_source_region(gradient: tuple[Dataset, Array], viewport: str, expected: Any) -> None:
    ds, pixels = gradient
    params = parse_render_params({"viewport": viewport}, PNG)
    rendered = np.asarray(_decode(render_frame(ds, pixels, params)))
    assert np.array_equal(rendered, expected(pixels))


def test_region_is_scaled_into_the_viewport(gradient: tuple[Dataset, Array]) -> None:
    ds, pixels = gradient
    params = parse_render_params({"viewport": "100,100,5,7,10,8"}, PNG)
    image = _decode(render_frame(ds, pixels, params))
    assert image.size == (100, 80)
    region = Image.fromarray(np.ascontiguousarray(pixels[7:15, 5:15]))
    assert (
        np.abs(
            _as_array(image) - _as_array(region.resize((100, 80), Image.Resampling.BILINEAR))
        ).max()
        <= 2
    )


def test_region_outside_the_image(gradient: tuple[Dataset, Array]) -> None:
    ds, pixels = gradient
    for viewport in ("10,10,40,0,5,5", "10,10,0,30,5,5"):
        with pytest.raises(RenderError, match="outside"):
            render_frame(ds, pixels, parse_render_params({"viewport": viewport}))


def test_viewport_keeps_aspect_ratio_and_caps_enlargement() -> None:
    pixels = _ramp(8, 64, "uint16")
    ds = _grey_dataset(pixels)
    assert _png(ds, pixels, viewport=(32, 32)).size == (32, 4)
    assert _png(ds, pixels, viewport=(640, 1000)).size == (640, 80)
    huge = _png(ds, pixels, viewport=(10**6, 10**6))
    assert huge.size == (MAX_UPSCALED_DIMENSION, MAX_UPSCALED_DIMENSION // 8)


def test_thumbnail_sizes() -> None:
    ds, pixels = _load("examples_palette.dcm")  # 800 x 350
    assert DEFAULT_THUMBNAIL_VIEWPORT == (128, 128)
    assert _decode(thumbnail(ds, pixels, None)).size == (128, 56)
    assert _decode(thumbnail(ds, pixels, (256, 256))).size == (256, 112)
    image = _decode(thumbnail(ds, pixels, (256, 256), PNG))
    assert image.format == "PNG" and image.mode == "RGB"
    small, small_pixels = _load("MR_small.dcm")  # 64 x 64: never enlarged
    assert _decode(thumbnail(small, small_pixels, (256, 256))).size == (64, 64)
    with pytest.raises(RenderError):
        thumbnail(small, small_pixels, None, "image/tiff")


# --------------------------------------------------------------------------- unrenderable


@pytest.mark.parametrize(
    ("interpretation", "pixels", "message"),
    [
        ("MONOCHROME2", np.zeros((3, 4, 5), np.uint16), "one frame"),
        ("MONOCHROME2", np.zeros((4, 5, 3), np.uint16), "one frame at a time"),
        ("RGB", np.zeros((4, 5), np.uint8), "does not match"),
        ("RGB", np.zeros((0, 5, 3), np.uint8), "no pixels"),
        ("HSV", np.zeros((4, 5, 3), np.uint8), "cannot be rendered"),
        ("PALETTE COLOR", np.zeros((4, 5), np.uint8), "Palette Color"),
        ("RGB", np.zeros((4, 5, 3), np.float32), "floating-point"),
    ],
)
def test_unrenderable_frames(interpretation: str, pixels: Array, message: str) -> None:
    ds = _grey_dataset(pixels[..., 0] if pixels.ndim == 3 else pixels)
    ds.PhotometricInterpretation = interpretation
    with pytest.raises(RenderError, match=message):
        render_frame(ds, pixels, RenderParams())


def test_decompression_pixel_count() -> None:
    ds, _ = _load("CT_small.dcm")
    assert decompression_pixel_count(ds) == 128 * 128
    ds, _ = _load("SC_rgb_rle_2frame.dcm")
    assert decompression_pixel_count(ds) == 100 * 100 * 3 * 2
    assert decompression_pixel_count(Dataset()) == 0


# --------------------------------------------------------------------------- parameters


def test_parse_defaults() -> None:
    params = parse_render_params({}, JPEG)
    assert params == RenderParams()
    assert params.notices() == ()


def test_parse_all_parameters() -> None:
    params = parse_render_params(
        [
            ("window", " 40 , 400 , LINEAR-Exact "),
            ("viewport", "512,256,10,20,-100,50"),
            ("quality", "75"),
            ("annotation", "patient"),
            ("annotation", "Technique,patient"),
            ("iccprofile", "sRGB"),
            ("accept", "image/png"),  # not a rendering parameter: ignored here
            ("charset", "utf-8"),
            ("vendor-thing", "x"),
        ],
        "image/PNG; q=0.9",
    )
    assert params.media_type == PNG
    assert params.window == (40.0, 400.0, "linear-exact")
    assert params.viewport == (512, 256)
    assert params.source_region == SourceRegion(10, 20, -100, 50)
    assert params.quality == 75
    assert params.annotation == ("patient", "technique")
    assert params.iccprofile == "srgb"
    assert len(params.notices()) == 2
    assert parse_render_params({"iccprofile": "no"}).notices() == ()


@pytest.mark.parametrize(
    ("viewport", "region"),
    [
        ("100,50", None),
        ("100,50,,,,", None),
        ("100,50,3,,,", SourceRegion(3, 0, None, None)),
        ("100,50,,4,,-7", SourceRegion(0, 4, None, -7)),
    ],
)
def test_parse_viewport_forms(viewport: str, region: SourceRegion | None) -> None:
    params = parse_render_params({"viewport": viewport})
    assert params.viewport == (100, 50)
    assert params.source_region == region


@pytest.mark.parametrize(
    "query",
    [
        {"window": "40,400"},
        {"window": "40,400,linear,x"},
        {"window": "a,400,linear"},
        {"window": "40,b,linear"},
        {"window": "40,0.5,linear"},
        {"window": "40,0,linear-exact"},
        {"window": "40,-1,sigmoid"},
        {"window": "40,400,cubic"},
        {"window": "nan,400,linear"},
        {"window": "40,inf,linear"},
        {"window": ""},
        {"viewport": "100"},
        {"viewport": "100,100,1"},
        {"viewport": "100,100,1,2,3,4,5"},
        {"viewport": "0,100"},
        {"viewport": "100,-5"},
        {"viewport": "x,100"},
        {"viewport": "100,100,-1,0,5,5"},
        {"viewport": "100,100,0,0,0,5"},
        {"viewport": "100,100,0,0,5,0"},
        {"viewport": "100,100,0,0,1.5,5"},
        {"quality": "0"},
        {"quality": "101"},
        {"quality": "high"},
        {"quality": "50.5"},
        {"annotation": "patient,"},
        {"annotation": "histogram"},
        {"iccprofile": "maybe"},
        [("window", "40,400,linear"), ("window", "40,400,linear")],
        [("viewport", "10,10"), ("viewport", "10,10")],
    ],
)
def test_parse_errors(query: Any) -> None:
    with pytest.raises(RenderError):
        parse_render_params(query, JPEG)


def test_parse_rejects_unsupported_media_type() -> None:
    with pytest.raises(RenderError, match="image/tiff"):
        parse_render_params({}, "image/tiff")


def test_params_validate_on_construction() -> None:
    with pytest.raises(RenderError):
        RenderParams(window=(40.0, 0.0, "linear"))
    with pytest.raises(RenderError):
        RenderParams(viewport=(0, 10))
    with pytest.raises(RenderError):
        RenderParams(quality=0)
    with pytest.raises(RenderError):
        SourceRegion(-1, 0)


def test_lookup_tables_are_reused_only_for_identical_inputs() -> None:
    # Large enough for the lookup-table path, with stored values -500..523.
    pixels = (np.arange(128 * 128, dtype="int16").reshape(128, 128) % 1024) - 500
    plain = _grey_dataset(pixels, WindowCenter=0, WindowWidth=400)
    variants = [
        plain,
        _grey_dataset(pixels, WindowCenter=100, WindowWidth=400),
        _grey_dataset(pixels, WindowCenter=0, WindowWidth=400, VOILUTFunction="SIGMOID"),
        _grey_dataset(pixels, WindowCenter=0, WindowWidth=400, RescaleSlope=2, RescaleIntercept=0),
        _grey_dataset(pixels, interpretation="MONOCHROME1", WindowCenter=0, WindowWidth=400),
        _grey_dataset(pixels),  # no window: the frame's full range
    ]
    expected = [
        _linear(pixels.astype(float), 0, 400),
        _linear(pixels.astype(float), 100, 400),
        _sigmoid(pixels.astype(float), 0, 400),
        _linear(pixels * 2.0, 0, 400),
        255 - _to_uint8(_linear(pixels.astype(float), 0, 400)),
        _min_max_scaled(pixels.astype(float)),
    ]
    # Twice over, so the second round is served from tables the first one computed.
    for _ in range(2):
        for attrs, want in zip(variants, expected, strict=True):
            got = _as_array(_png(attrs, pixels))
            assert np.abs(got.astype(int) - _to_uint8(want).astype(int)).max() <= 1
    # A window given in the request is an input too.
    windowed = _as_array(_png(plain, pixels, window=(100.0, 400.0, "linear")))
    assert np.array_equal(windowed, _to_uint8(_linear(pixels.astype(float), 100, 400)))
