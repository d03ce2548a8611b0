"""Validation of audit messages against the DICOM Audit Message Schema (PS3.15 A.5.1)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from lxml import etree

SCHEMA = Path(__file__).resolve().parent / "dicom_audit_message.rng"


@cache
def schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


def validate(xml: str) -> etree._Element:
    """Parse an audit message and assert it is schema-valid; returns its root element."""
    root = etree.fromstring(xml.encode("utf-8"))
    checker = schema()
    assert checker.validate(root), f"{checker.error_log}\n{xml}"
    return root
