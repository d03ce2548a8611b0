"""End-to-end fixtures: a real server process and real HTTP clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.e2e.server import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One archive server per test module, on its own empty data folder."""
    data_dir: Path = tmp_path_factory.mktemp("archive") / "data"
    process = ServerProcess(data_dir)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root, timeout=60) as client:
        yield client


@pytest.fixture
def dicomweb(server: ServerProcess) -> DICOMwebClient:
    return DICOMwebClient(url=server.root)
