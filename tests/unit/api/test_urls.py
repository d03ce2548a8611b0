"""The DICOMweb root as the client sees it, from the request's scope and headers."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.requests import Request

from dicomweb_server.api.urls import base_url
from dicomweb_server.settings import Settings


def request(headers: dict[str, str], *, scheme: str = "http", port: int = 8042) -> Request:
    return Request(
        {
            "type": "http",
            "scheme": scheme,
            "path": "/dicom-web/studies",
            "query_string": b"limit=5",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "server": ("10.0.0.5", port),
        }
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.mark.parametrize(
    ("headers", "scheme", "port", "expected"),
    [
        ({"Host": "pacs:8042"}, "http", 8042, "http://pacs:8042/dicom-web"),
        # A Host without the port gets the port the request came in on, unless default.
        ({"Host": "pacs"}, "http", 8042, "http://pacs:8042/dicom-web"),
        ({"Host": "pacs"}, "https", 443, "https://pacs/dicom-web"),
        ({"Host": "[::1]"}, "http", 8042, "http://[::1]:8042/dicom-web"),
        ({}, "http", 8042, "http://10.0.0.5:8042/dicom-web"),
        (
            {"Host": "pacs:8042", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "h.org",
             "X-Forwarded-Prefix": "/archive/"},
            "http", 8042, "https://h.org/archive/dicom-web",
        ),
        (
            {"Host": "pacs:8042", "Forwarded": 'for=1.2.3.4;proto=https;host="h.org:8443"'},
            "http", 8042, "https://h.org:8443/dicom-web",
        ),
    ],
)  # fmt: skip
def test_root_from_scope_and_headers(
    settings: Settings, headers: dict[str, str], scheme: str, port: int, expected: str
) -> None:
    assert base_url(request(headers, scheme=scheme, port=port), settings) == expected


def test_forwarded_headers_are_ignored_unless_trusted(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, trust_forwarded_headers=False)
    headers = {"Host": "pacs:8042", "X-Forwarded-Host": "evil.org", "Forwarded": "host=evil.org"}
    assert base_url(request(headers), settings) == "http://pacs:8042/dicom-web"


def test_the_first_of_repeated_headers_counts(settings: Settings) -> None:
    scope_request = request({"Host": "pacs:8042"})
    scope_request.scope["headers"].append((b"host", b"other:1"))
    assert base_url(scope_request, settings) == "http://pacs:8042/dicom-web"


def test_one_request_works_its_root_out_once(settings: Settings) -> None:
    first = request({"Host": "pacs:8042"})
    assert base_url(first, settings) == "http://pacs:8042/dicom-web"
    # The headers of a request do not change: a second call answers from the scope.
    first.scope["headers"] = [(b"host", b"changed:1")]
    assert base_url(first, settings) == "http://pacs:8042/dicom-web"
    assert base_url(request({"Host": "changed:1"}), settings) == "http://changed:1/dicom-web"


def test_a_configured_public_url_wins(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, public_base_url="https://pacs.example.org/dw/")
    assert base_url(request({"Host": "x"}), settings) == "https://pacs.example.org/dw"
