"""Schemathesis against the archive's own OpenAPI document: no operation answers 5xx.

Every operation of ``/openapi.json`` is called by a running server with generated path and
query parameters (and bodies where declared), a bounded number of examples each, and only
the "not a server error" check is applied: DICOMweb answers depend on headers and media
types the generated document does not describe, so conformance to the schema's response
shapes is left to the other end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from dicomweb_server.app import create_app
from dicomweb_server.settings import Settings
from tests.dicom_files import bundled_bytes, multipart, stow_content_type
from tests.e2e.server import ServerProcess

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def schemathesis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("schemathesis") / "data", env={"DICOMWEB_AUTH": "off"}
    )
    server.start()
    # Something to find: generated UIDs rarely hit it, but the search and render paths run.
    response = httpx.post(
        f"{server.root}/studies",
        content=multipart([bundled_bytes("CT_small.dcm"), bundled_bytes("SC_rgb_rle_2frame.dcm")]),
        headers={"Content-Type": stow_content_type()},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    yield server
    log = server.log()
    server.stop()
    errors = [line for line in log.splitlines() if line.startswith(("ERROR:", "CRITICAL"))]
    assert errors == [], errors


# The document the server serves, built without starting anything (create_app only builds
# the FastAPI object), so that the operations are known when the tests are collected.
schema = schemathesis.openapi.from_dict(create_app(Settings(auth="off")).openapi())


@schema.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_operation_answers_a_server_error(
    schemathesis_server: ServerProcess, case: schemathesis.Case
) -> None:
    case.call_and_validate(
        base_url=schemathesis_server.url, checks=[not_a_server_error], timeout=60
    )
