"""The real OHIF Viewer (3.13, prebuilt from npm) against the archive, in headless Chromium.

The viewer is served from its own origin and talks to the archive across origins (CORS), as
in a deployment. For each stored study the test opens the viewer, waits for the viewport to
draw, checks the image is not blank and the series thumbnails load, and that no request to the
archive failed. Screenshots go to ``$DICOMWEB_TEST_ARTIFACTS/ohif`` (default
``test-artifacts/ohif``). Run ``scripts/e2e-setup`` first (Debian's Chromium and the
``@ohif/app`` package); without them the test is skipped.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.dicom_files import bundled_path, multipart, stow_content_type
from tests.e2e.ohif_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ViewerServer,
    artifacts_dir,
    missing_prerequisites,
)
from tests.e2e.server import ServerProcess

_MISSING = missing_prerequisites()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_MISSING is not None, reason=f"OHIF browser test: {_MISSING}"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

PAGE_TIMEOUT_S = 90.0  # app boot and first image on software WebGL
SETTLE_S = 1.5  # no archive request in flight for this long: the page is done loading
IDLE_GIVE_UP_S = 5.0  # idle this long after the requests a wait depends on failed: give up
BLANK_STDDEV = 4.0  # luminance standard deviation (0-255) below which a canvas is blank


@dataclass(frozen=True)
class Study:
    label: str
    source: str  # pydicom bundled test file
    patient_name: str
    patient_id: str
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    sop_uid: str = field(default_factory=generate_uid)

    def part10(self) -> bytes:
        """The bundled file as its own study: fresh UIDs (the bundled files share some)."""
        ds = pydicom.dcmread(bundled_path(self.source))
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = self.series_uid
        ds.SOPInstanceUID = self.sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = self.sop_uid
        ds.PatientName = self.patient_name
        ds.PatientID = self.patient_id
        ds.StudyDescription = f"OHIF e2e {self.label}"
        ds.AccessionNumber = f"E2E{self.label[:10].upper()}"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()


STUDIES = [
    Study("ct", "CT_small.dcm", "E2E^Computed", "E2E-CT"),
    Study("mr", "MR_small.dcm", "E2E^Magnetic", "E2E-MR"),
    Study("jpeg2000", "MR_small_jp2klossless.dcm", "E2E^Jpegtwothousand", "E2E-J2K"),
    Study("multiframe", "examples_ybr_color.dcm", "E2E^Multiframe", "E2E-MF"),
]


# --- fixtures -------------------------------------------------------------------------------


@dataclass
class Setup:
    viewer: ViewerServer
    archive: ServerProcess


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """The viewer's static server and an archive allowing the viewer's origin (CORS)."""
    viewer = ViewerServer()
    archive = ServerProcess(
        tmp_path_factory.mktemp("ohif-archive") / "data",
        env={"DICOMWEB_CORS_ORIGINS": viewer.origin},
    )
    try:
        archive.start()
        viewer.start(archive.root)
        with httpx.Client(base_url=archive.root, timeout=60) as client:
            response = client.post(
                "/studies",
                content=multipart([study.part10() for study in STUDIES]),
                headers={"Content-Type": stow_content_type(), "Accept": "application/dicom+json"},
            )
            assert response.status_code == 200, response.text
        yield Setup(viewer, archive)
    finally:
        viewer.stop()
        archive.stop()


@pytest.fixture(scope="module")
def browser(setup: Setup) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


# --- recording what the page asks the archive -----------------------------------------------


@dataclass
class Exchange:
    method: str
    url: str
    accept: str
    status: int | None = None  # None: no response (network or CORS failure)
    failure: str | None = None

    def __str__(self) -> str:
        outcome = self.failure if self.status is None else str(self.status)
        return f"{self.method} {self.url} [Accept: {self.accept or '-'}] -> {outcome}"


class Recorder:
    """Requests to the archive, their outcomes, CORS errors and requests leaving the machine."""

    def __init__(self, page: Any, archive_root: str, viewer_origin: str) -> None:
        self.archive_root = archive_root
        self.viewer_origin = viewer_origin
        self.exchanges: list[Exchange] = []
        self.in_flight: dict[Any, Exchange] = {}
        self.last_activity = time.monotonic()
        self.console_errors: list[str] = []
        self.external: list[str] = []
        page.on("request", self._request)
        page.on("requestfinished", self._finished)
        page.on("requestfailed", self._failed)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.console_errors.append(f"pageerror: {error}"))

    def _ours(self, url: str) -> bool:
        return url.startswith(self.archive_root)

    def _request(self, request: Any) -> None:
        url = request.url
        if self._ours(url):
            exchange = Exchange(request.method, url, request.headers.get("accept", ""))
            self.exchanges.append(exchange)
            self.in_flight[request] = exchange
            self.last_activity = time.monotonic()
        elif not url.startswith((self.viewer_origin, "data:", "blob:")):
            self.external.append(f"{request.method} {url}")

    def _finished(self, request: Any) -> None:
        exchange = self.in_flight.pop(request, None)
        if exchange is not None:
            response = request.response()
            exchange.status = response.status if response else None
            if response is None:
                exchange.failure = "no response"
            self.last_activity = time.monotonic()

    def _failed(self, request: Any) -> None:
        exchange = self.in_flight.pop(request, None)
        if exchange is not None:
            exchange.failure = request.failure or "failed"
            self.last_activity = time.monotonic()

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def idle_for(self, seconds: float) -> bool:
        return not self.in_flight and time.monotonic() - self.last_activity > seconds

    def failed_and_idle(self) -> str | None:
        """Some request failed and the page has gone quiet: what a wait hopes for won't come."""
        failures = self.failures()
        if failures and self.idle_for(IDLE_GIVE_UP_S):
            return "requests failed: " + "; ".join(failures)
        return None

    def failures(self) -> list[str]:
        failed = [
            str(exchange)
            for exchange in self.exchanges
            if exchange.failure is not None or (exchange.status or 0) >= 400
        ]
        failed += [
            f"CORS: {text}"
            for text in self.console_errors
            if "CORS" in text or "Access-Control" in text
        ]
        return failed

    def report(self) -> str:
        lines = ["requests to the archive:", *(f"  {exchange}" for exchange in self.exchanges)]
        if self.console_errors:
            lines += ["console errors:", *(f"  {text[:300]}" for text in self.console_errors)]
        if self.external:
            lines += ["requests leaving the machine:", *(f"  {url}" for url in self.external)]
        return "\n".join(lines)


def wait_until(
    page: Any,
    condition: Callable[[], Any],
    what: str,
    timeout: float = PAGE_TIMEOUT_S,
    hopeless: Callable[[], str | None] = lambda: None,
) -> Any:
    """Poll ``condition`` while letting the page's events run; its first truthy value.

    ``hopeless`` ends the wait early with its reason (e.g. the request it needed failed).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        reason = hopeless()
        if reason:
            raise AssertionError(f"gave up waiting for {what}: {reason}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        page.wait_for_timeout(250)


def settle(page: Any, recorder: Recorder, timeout: float = PAGE_TIMEOUT_S) -> None:
    """Wait until no request to the archive has been in flight for ``SETTLE_S``."""
    wait_until(page, lambda: recorder.idle_for(SETTLE_S), "requests to the archive to end", timeout)


def dismiss_dialogs(page: Any) -> None:
    """Close the first-visit tour ("Skip all") if the configuration did not prevent it."""
    skip = page.get_by_role("button", name="Skip all")
    if skip.count() and skip.first.is_visible():
        skip.first.click()


@dataclass
class Session:
    page: Any
    recorder: Recorder


@pytest.fixture
def session(request: pytest.FixtureRequest, setup: Setup, browser: Any) -> Iterator[Session]:
    """A fresh browser context (no stored state) and page, recording the archive traffic."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(PAGE_TIMEOUT_S * 1000)
    page = context.new_page()
    recorder = Recorder(page, setup.archive.root, setup.viewer.origin)
    try:
        yield Session(page, recorder)
    finally:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        try:
            (artifacts_dir() / f"{name}-requests.txt").write_text(recorder.report() + "\n")
        finally:
            context.close()


# --- canvas inspection ----------------------------------------------------------------------

# Luminance statistics of the largest drawn canvas of the (first) viewport.
CANVAS_STATS_JS = """
() => {
  const canvases = [...document.querySelectorAll(
    '.cornerstone-viewport-element canvas.cornerstone-canvas, .viewport-element canvas')];
  const visible = canvases
    .map(c => ({c, r: c.getBoundingClientRect()}))
    .filter(({r}) => r.width > 16 && r.height > 16)
    .sort((a, b) => b.r.width * b.r.height - a.r.width * a.r.height);
  if (!visible.length) return null;
  const {c, r} = visible[0];
  let data;
  const context = c.getContext('2d', {willReadFrequently: true});
  if (context) {
    data = context.getImageData(0, 0, c.width, c.height).data;
  } else {
    const copy = document.createElement('canvas');
    copy.width = c.width; copy.height = c.height;
    const copyContext = copy.getContext('2d');
    copyContext.drawImage(c, 0, 0);
    data = copyContext.getImageData(0, 0, c.width, c.height).data;
  }
  let n = 0, sum = 0, sum2 = 0, nonBlack = 0;
  const step = 4 * Math.max(1, Math.floor(data.length / 4 / 250000));
  for (let i = 0; i < data.length; i += step) {
    const y = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
    n++; sum += y; sum2 += y * y; if (y > 8) nonBlack++;
  }
  const mean = sum / n;
  return {width: c.width, height: c.height, x: r.x, y: r.y, w: r.width, h: r.height,
          mean, std: Math.sqrt(Math.max(0, sum2 / n - mean * mean)), nonBlack: nonBlack / n};
}
"""

# The study browser's thumbnail images (one per series): how many, how many have pixels.
THUMBNAILS_JS = """
() => {
  const images = [...document.querySelectorAll(
    '[data-cy="studyBrowser-panel"] img, [data-cy="study-browser-thumbnail"] img')];
  const unique = [...new Set(images)];
  return {count: unique.length,
          loaded: unique.filter(i => i.complete && i.naturalWidth > 0).length};
}
"""


def canvas_stats(page: Any) -> dict[str, float] | None:
    stats: dict[str, float] | None = page.evaluate(CANVAS_STATS_JS)
    return stats


def screenshot_std(path: Path) -> float:
    from PIL import Image, ImageStat

    with Image.open(path) as image:
        return float(ImageStat.Stat(image.convert("L")).stddev[0])


# --- tests ----------------------------------------------------------------------------------


def test_study_list_shows_the_stored_studies(setup: Setup, session: Session) -> None:
    page, recorder = session.page, session.recorder
    page.goto(setup.viewer.origin + "/")
    # OHIF shows a person name "Family^Given" as "Family, Given".
    names = {
        study.patient_name: page.get_by_text(re.compile(r"\W+".join(study.patient_name.split("^"))))
        for study in STUDIES
    }

    def missing() -> list[str]:
        dismiss_dialogs(page)
        return [name for name, cell in names.items() if not cell.count()]

    problems: list[str] = []
    try:
        wait_until(
            page,
            lambda: not missing(),
            "the stored studies in the list",
            hopeless=recorder.failed_and_idle,
        )
    except AssertionError as error:
        problems.append(f"{error}; not listed: {missing()}")
    try:
        settle(page, recorder)
    except AssertionError as error:
        problems.append(str(error))
    page.screenshot(path=artifacts_dir() / "study-list.png", full_page=True)
    if not any(re.search(r"/dicom-web/studies\?", e.url) for e in recorder.exchanges):
        problems.append("the study list searched no studies")
    failures = recorder.failures()
    if failures:
        problems.append("failed requests:\n  " + "\n  ".join(failures))
    assert not problems, "\n".join([*problems, recorder.report()])


@pytest.mark.parametrize("study", STUDIES, ids=[study.label for study in STUDIES])
def test_viewer_draws_study_with_thumbnails(setup: Setup, session: Session, study: Study) -> None:
    page, recorder = session.page, session.recorder
    page.goto(f"{setup.viewer.origin}/viewer?StudyInstanceUIDs={study.study_uid}")
    problems: list[str] = []

    # 1. The viewport draws a non-blank image.
    stats: dict[str, float] | None = None

    def drawn() -> bool:
        nonlocal stats
        dismiss_dialogs(page)
        stats = canvas_stats(page)
        return bool(stats and stats["std"] > BLANK_STDDEV)

    try:
        wait_until(
            page,
            drawn,
            f"the {study.label} image to be drawn",
            hopeless=recorder.failed_and_idle,
        )
    except AssertionError as error:
        problems.append(f"{error}; last canvas statistics: {stats}")

    # 2. Thumbnails appear in the study browser.
    thumbnails: dict[str, int] = {}

    def thumbnails_loaded() -> bool:
        nonlocal thumbnails
        thumbnails = page.evaluate(THUMBNAILS_JS)
        return 0 < thumbnails["loaded"] == thumbnails["count"]

    try:
        wait_until(
            page,
            thumbnails_loaded,
            f"a {study.label} thumbnail",
            timeout=60,
            hopeless=recorder.failed_and_idle,
        )
    except AssertionError as error:
        problems.append(f"{error}; thumbnail images: {thumbnails}")

    # 3. Everything the viewer asked the archive for has been answered.
    try:
        settle(page, recorder)
    except AssertionError as error:
        problems.append(str(error))
    dismiss_dialogs(page)

    # Screenshots of the viewport region and the whole page (test artefacts).
    viewport_png = artifacts_dir() / f"viewer-{study.label}-viewport.png"
    stats = canvas_stats(page)
    if stats:
        page.screenshot(
            path=viewport_png,
            clip={"x": stats["x"], "y": stats["y"], "width": stats["w"], "height": stats["h"]},
        )
    page.screenshot(path=artifacts_dir() / f"viewer-{study.label}.png")

    if stats is None or stats["std"] <= BLANK_STDDEV:
        problems.append(f"the viewport is blank: {stats}")
    elif screenshot_std(viewport_png) <= BLANK_STDDEV:
        problems.append(f"the viewport screenshot is blank: {viewport_png}")

    thumbnail_requests = [e for e in recorder.exchanges if "/thumbnail" in e.url]
    if not any(e.status == 200 for e in thumbnail_requests):
        problems.append(
            "no thumbnail answered 200: " + "; ".join(map(str, thumbnail_requests or ["none"]))
        )
    frame_requests = [e for e in recorder.exchanges if "/frames/" in e.url]
    if not frame_requests:
        problems.append("the viewer fetched no frames")

    failures = recorder.failures()
    if failures:
        problems.append("failed requests:\n  " + "\n  ".join(failures))
    assert not problems, "\n".join([*problems, recorder.report()])
