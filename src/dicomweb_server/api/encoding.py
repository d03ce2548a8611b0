"""Serialising DICOM JSON datasets as application/dicom+json or XML (PS3.19)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from dicomweb_server.dicom.xml_model import dataset_to_xml

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"


def new_boundary() -> str:
    return f"dicomweb-{secrets.token_hex(12)}"


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value)


def xml_multipart(datasets: Iterable[Mapping[str, Any]], boundary: str) -> bytes:
    """One ``application/dicom+xml`` part per dataset (PS3.18 8.7.3.2 / PS3.19)."""
    pieces: list[bytes] = []
    head = f"--{boundary}\r\nContent-Type: {DICOM_XML}\r\n\r\n".encode()
    for dataset in datasets:
        pieces.append(head)
        pieces.append(dataset_to_xml(dataset))
        pieces.append(b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    return b"".join(pieces)


def multipart_related_type(boundary: str, part_type: str, **params: str) -> str:
    extra = "".join(f'; {name.replace("_", "-")}="{value}"' for name, value in params.items())
    return f'multipart/related; type="{part_type}"; boundary={boundary}{extra}'
