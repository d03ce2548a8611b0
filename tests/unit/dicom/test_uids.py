"""UID grammar (PS3.5 Section 9.1)."""

from __future__ import annotations

import pytest

from dicomweb_server.dicom.uids import MAX_UID_LENGTH, is_valid_uid


@pytest.mark.parametrize(
    "uid",
    [
        "0",
        "1",
        "1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.5.1.4.1.1.2",
        "2.25.329800735698586629295641978511506172918",
        "1.0.0.0",
        "1.20.300",
        "1." + "2" * (MAX_UID_LENGTH - 2),
    ],
)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    ("uid", "why"),
    [
        ("", "empty"),
        ("1." + "2" * (MAX_UID_LENGTH - 1), "65 characters"),
        ("1.02.3", "leading zero in a multi-digit component"),
        ("01.2", "leading zero in the first component"),
        ("1..2", "empty component"),
        (".1.2", "leading period"),
        ("1.2.", "trailing period"),
        ("1.2.3 ", "trailing space (padding must be removed first)"),
        ("1.2.3\x00", "trailing NUL (padding must be removed first)"),
        (" 1.2.3", "leading space"),
        ("1.2.a", "letter"),
        ("1.2.-3", "sign"),
        ("1.2.3\\1.2.4", "two values"),
        ("1.2.\u0663", "non-ASCII digit"),
        ("1,2,3", "wrong separator"),
    ],
)
def test_invalid_uids(uid: str, why: str) -> None:
    assert not is_valid_uid(uid), why


def test_length_limit_is_inclusive() -> None:
    uid = "1." + "2" * (MAX_UID_LENGTH - 2)
    assert len(uid) == MAX_UID_LENGTH
    assert is_valid_uid(uid)
    assert not is_valid_uid(uid + "2")
