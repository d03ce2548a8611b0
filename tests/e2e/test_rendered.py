"""WADO-RS rendered resources and thumbnails end to end (PS3.18 8.3.5, 9.5, 10.4.1.1.x)."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_windowing
from pydicom.uid import generate_uid

from tests.dicom_files import (
    bundled_bytes,
    dataset_from_bytes,
    instance_path,
    make_ct,
    multipart,
    split_multipart,
    stow_content_type,
    with_new_uids,
)
from tests.e2e.server import ServerProcess


def store(http: httpx.Client, parts: list[bytes]) -> None:
    response = http.post(
        "/studies", content=multipart(parts), headers={"Content-Type": stow_content_type()}
    )
    assert response.status_code == 200, response.text


def frames_stack(count: int, rows: int, columns: int) -> np.ndarray:
    """Frames that render differently even with a per-frame full-range window."""
    yy, xx = np.mgrid[0:rows, 0:columns]
    patterns = [xx * 40, yy * 60, ((xx // 4 + yy // 4) % 2) * 3000 + xx]
    return np.stack([patterns[k % 3] % 4096 for k in range(count)]).astype(np.uint16)


@pytest.fixture(scope="module")
def images(server: ServerProcess) -> dict[str, bytes]:
    study, series_a, series_b = generate_uid(), generate_uid(), generate_uid()
    grey = frames_stack(1, 40, 40)[0].astype("<u2").tobytes()
    report = dataset_from_bytes(bundled_bytes("test-SR.dcm"))
    report.StudyInstanceUID, report.SeriesInstanceUID = study, series_b
    report.SOPInstanceUID = generate_uid()
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID
    buffer = io.BytesIO()
    report.save_as(buffer)
    files = {
        "ct": with_new_uids(bundled_bytes("CT_small.dcm")),
        "wide": make_ct(rows=100, columns=200),
        "mono2": make_ct(rows=40, columns=40, pixel_data=grey),
        "mono1": make_ct(
            rows=40,
            columns=40,
            pixel_data=grey,
            extra={"PhotometricInterpretation": "MONOCHROME1"},
        ),
        "rgb": with_new_uids(bundled_bytes("examples_rgb_color.dcm")),
        "ybr_jpeg": with_new_uids(bundled_bytes("SC_rgb_jpeg_dcmtk.dcm")),
        "palette": with_new_uids(bundled_bytes("examples_palette.dcm")),
        "multiframe": make_ct(
            rows=32, columns=48, frames=3, pixel_data=frames_stack(3, 32, 48).tobytes()
        ),
        "tall": with_new_uids(bundled_bytes("JPEG2000.dcm")),
        # A study of two series: two CT images, then one more image and a report.
        "a1": make_ct(study_uid=study, series_uid=series_a, instance_number=1),
        "a2": make_ct(study_uid=study, series_uid=series_a, instance_number=2),
        "b1": with_new_uids(bundled_bytes("MR_small.dcm"), study, series_b),
        "report": buffer.getvalue(),
    }
    with httpx.Client(base_url=server.root, timeout=60) as http:
        store(http, list(files.values()))
    return files


def image(response: httpx.Response, media_type: str = "image/jpeg") -> Image.Image:
    assert response.status_code == 200, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == media_type
    picture = Image.open(io.BytesIO(response.content))
    picture.load()
    assert picture.get_format_mimetype() == media_type
    return picture


def png_array(response: httpx.Response) -> np.ndarray:
    return np.asarray(image(response, "image/png"))


def expected_window(
    ds: Dataset, center: float, width: float, frame: int | None = None
) -> np.ndarray:
    """PS3.3 C.11.2.1.2 LINEAR window of the modality values onto 0..255 (pydicom's maths)."""
    pixels = ds.pixel_array if frame is None else ds.pixel_array[frame]
    values = apply_modality_lut(pixels, ds)
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    voi.PixelRepresentation = 0
    voi.BitsStored = 8
    voi.WindowCenter, voi.WindowWidth = center, width
    voi.VOILUTFunction = "LINEAR"
    output = np.asarray(apply_windowing(values, voi), dtype=np.float64)
    return np.clip(np.rint(output), 0, 255).astype(np.uint8)


def close(a: np.ndarray, b: np.ndarray, tolerance: int = 1) -> bool:
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= tolerance


def test_default_rendering_is_jpeg_of_the_image_size(
    http: httpx.Client, images: dict[str, bytes]
) -> None:
    for name in ("ct", "wide", "rgb", "palette", "tall"):
        ds = dataset_from_bytes(images[name])
        picture = image(
            http.get(instance_path(images[name]) + "/rendered", headers={"Accept": "*/*"})
        )
        assert picture.size == (ds.Columns, ds.Rows), name


def test_png_and_gif(http: httpx.Client, images: dict[str, bytes]) -> None:
    url = instance_path(images["ct"]) + "/rendered"
    assert png_array(http.get(url, headers={"Accept": "image/png"})).shape == (128, 128)
    assert image(http.get(url, headers={"Accept": "image/gif"}), "image/gif").size == (128, 128)
    # The accept query parameter picks the type too (PS3.18 8.3.3.1).
    response = http.get(url, params={"accept": "image/png"}, headers={"Accept": "*/*"})
    assert image(response, "image/png").size == (128, 128)
    response = http.get(url, headers={"Accept": "image/webp"})
    assert response.status_code == 406


def test_viewport_fits_and_keeps_aspect_ratio(http: httpx.Client, images: dict[str, bytes]) -> None:
    for name, expected in (("wide", (64, 32)), ("ct", (64, 64)), ("tall", (16, 64))):
        response = http.get(
            instance_path(images[name]) + "/rendered",
            params={"viewport": "64,64"},
            headers={"Accept": "image/png"},
        )
        assert image(response, "image/png").size == expected, name


def test_window_matches_pydicom(http: httpx.Client, images: dict[str, bytes]) -> None:
    ds = dataset_from_bytes(images["ct"])
    for center, width in ((40, 400), (200, 1000), (-500, 1)):
        response = http.get(
            instance_path(images["ct"]) + "/rendered",
            params={"window": f"{center},{width},linear"},
            headers={"Accept": "image/png"},
        )
        rendered = png_array(response)
        assert close(rendered, expected_window(ds, center, width)), (center, width)


def test_monochrome1_is_inverted(http: httpx.Client, images: dict[str, bytes]) -> None:
    for params in ({"window": "2000,3000,linear"}, {}):
        mono1, mono2 = (
            png_array(
                http.get(
                    instance_path(images[name]) + "/rendered",
                    params=params,
                    headers={"Accept": "image/png"},
                )
            )
            for name in ("mono1", "mono2")
        )
        assert mono2.std() > 0
        assert np.array_equal(mono1, 255 - mono2), params


def test_colour_images_render_in_colour(http: httpx.Client, images: dict[str, bytes]) -> None:
    for name in ("rgb", "ybr_jpeg", "palette"):
        rendered = png_array(
            http.get(instance_path(images[name]) + "/rendered", headers={"Accept": "image/png"})
        )
        ds = dataset_from_bytes(images[name])
        assert rendered.shape == (ds.Rows, ds.Columns, 3), name
        if name == "palette":
            rgb = apply_color_lut(ds.pixel_array, ds)
            expected = np.rint(rgb.astype(np.float64) * 255 / 65535).astype(np.uint8)
        else:
            expected = ds.pixel_array  # RGB, YBR converted to RGB as pydicom does
        assert close(rendered, expected, 1 if name != "ybr_jpeg" else 2), name
        assert not np.array_equal(rendered[..., 0], rendered[..., 1]), name  # not grey


def test_multi_frame_rendering(http: httpx.Client, images: dict[str, bytes]) -> None:
    data = images["multiframe"]
    ds = dataset_from_bytes(data)
    base = instance_path(data)

    def png(url: str, **params: str) -> np.ndarray:
        return png_array(http.get(url, params=params, headers={"Accept": "image/png"}))

    whole = png(base + "/rendered")
    first = png(base + "/frames/1/rendered")
    second = png(base + "/frames/2/rendered")
    assert np.array_equal(whole, first)  # the instance renders its first frame
    assert not np.array_equal(first, second)
    for number in (1, 2, 3):
        rendered = png(base + f"/frames/{number}/rendered", window="2048,4096,linear")
        assert close(rendered, expected_window(ds, 2048, 4096, number - 1)), number
    response = http.get(base + "/frames/1,2/rendered", headers={"Accept": "*/*"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith('multipart/related; type="image/jpeg"')
    parts = list(split_multipart(response.content, response.headers["content-type"]))
    assert len(parts) == 2
    for headers, body in parts:
        assert headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(body)).size == (48, 32)
    response = http.get(
        base + "/frames/1,2/rendered", headers={"Accept": 'multipart/related; type="image/png"'}
    )
    parts = list(split_multipart(response.content, response.headers["content-type"]))
    assert [np.asarray(Image.open(io.BytesIO(body))).tolist() for _, body in parts] == [
        first.tolist(),
        second.tolist(),
    ]
    assert http.get(base + "/frames/4/rendered").status_code == 404
    assert http.get(base + "/frames/0/rendered").status_code == 404


def test_quality_changes_jpeg_size(http: httpx.Client, images: dict[str, bytes]) -> None:
    url = instance_path(images["rgb"]) + "/rendered"
    low = image(http.get(url, params={"quality": "10"}))
    high = image(http.get(url, params={"quality": "95"}))
    assert low.size == high.size
    sizes = [len(http.get(url, params={"quality": q}).content) for q in ("10", "95")]
    assert sizes[0] < sizes[1]


def test_annotation_is_answered_with_a_warning(
    http: httpx.Client, images: dict[str, bytes]
) -> None:
    response = http.get(instance_path(images["ct"]) + "/rendered", params={"annotation": "patient"})
    image(response)
    assert response.headers["warning"].startswith("299 ")
    assert "annotation" in response.headers["warning"]


@pytest.mark.parametrize(
    "params",
    [
        {"window": "1,2"},
        {"window": "a,b,linear"},
        {"window": "40,0,linear"},
        {"window": "40,400,cubic"},
        {"viewport": "0,10"},
        {"viewport": "10"},
        {"viewport": "-5,10"},
        {"quality": "500"},
        {"quality": "0"},
        {"quality": "high"},
        {"annotation": "everything"},
    ],
)
def test_bad_rendering_parameters_are_400(
    http: httpx.Client, images: dict[str, bytes], params: dict[str, str]
) -> None:
    response = http.get(instance_path(images["ct"]) + "/rendered", params=params)
    assert response.status_code == 400, (params, response.status_code)
    assert response.text.strip()


def test_study_and_series_rendered_are_one_image_per_image_instance(
    http: httpx.Client, images: dict[str, bytes]
) -> None:
    a1, b1 = dataset_from_bytes(images["a1"]), dataset_from_bytes(images["b1"])
    study = f"/studies/{a1.StudyInstanceUID}"
    for url, count in (
        (study + "/rendered", 3),
        (f"{study}/series/{a1.SeriesInstanceUID}/rendered", 2),
        (f"{study}/series/{b1.SeriesInstanceUID}/rendered", 1),
    ):
        response = http.get(url, headers={"Accept": 'multipart/related; type="image/png"'})
        assert response.status_code == 200, (url, response.text)
        assert response.headers["content-type"].startswith('multipart/related; type="image/png"')
        parts = list(split_multipart(response.content, response.headers["content-type"]))
        assert len(parts) == count, url
        for headers, body in parts:
            assert headers["content-type"] == "image/png"
            Image.open(io.BytesIO(body)).load()
    report = instance_path(images["report"])
    assert http.get(report + "/rendered").status_code == 404
    assert http.get(f"/studies/{generate_uid()}/rendered").status_code == 404


def test_thumbnails(http: httpx.Client, images: dict[str, bytes]) -> None:
    a1 = dataset_from_bytes(images["a1"])
    study = f"/studies/{a1.StudyInstanceUID}"
    for url in (
        study + "/thumbnail",
        f"{study}/series/{a1.SeriesInstanceUID}/thumbnail",
        instance_path(images["a1"]) + "/thumbnail",
        instance_path(images["rgb"]) + "/thumbnail",
    ):
        picture = image(http.get(url, headers={"Accept": "*/*"}))
        assert picture.width <= 256 and picture.height <= 256, url
    for name, expected in (("rgb", (256, 192)), ("tall", (64, 256)), ("ct", (128, 128))):
        url = instance_path(images[name]) + "/thumbnail"
        first = http.get(url, params={"viewport": "256,256"})
        assert image(first).size == expected, name
        again = http.get(url, params={"viewport": "256,256"})
        assert again.content == first.content, name  # served from the cache
    small = image(
        http.get(instance_path(images["rgb"]) + "/thumbnail", params={"viewport": "64,64"})
    )
    assert small.size == (64, 48)
    report = instance_path(images["report"])
    assert http.get(report + "/thumbnail").status_code == 404
