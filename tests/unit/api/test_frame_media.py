"""Frame representation negotiation (PS3.18 8.7.3.3, Tables 8.7.3-4 and 8.7.3-5)."""

from __future__ import annotations

import pytest

from dicomweb_server.api.frame_media import FrameChoice, choose_frame_representation
from dicomweb_server.api.media import parse_accept
from dicomweb_server.errors import NotAcceptable

ELE = "1.2.840.10008.1.2.1"
ILE = "1.2.840.10008.1.2"
BE = "1.2.840.10008.1.2.2"
J2K = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
JLS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
LOSSLESS_TARGETS = {ELE, J2K, JLS, RLE}


def lossless_only(source: str, target: str) -> bool:
    return target in LOSSLESS_TARGETS


def nothing(source: str, target: str) -> bool:
    return False


def choose(accept: str, stored: str, frames: int = 1, can=lossless_only) -> FrameChoice:  # type: ignore[no-untyped-def]
    return choose_frame_representation(
        parse_accept([accept] if accept else []), stored, frames, can
    )


@pytest.mark.parametrize(
    ("accept", "stored", "expected"),
    [
        # What OHIF / Cornerstone send: the stored bytes, labelled with their own media type.
        (
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            J2K,
            (True, "image/jp2", J2K, True),
        ),
        (
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            ELE,
            (True, "application/octet-stream", ELE, True),
        ),
        (
            'multipart/related; type=application/octet-stream; transfer-syntax="*"',
            RLE,
            (True, "image/dicom-rle", RLE, True),
        ),
        # No transfer syntax: the default, uncompressed Explicit VR Little Endian.
        (
            'multipart/related; type="application/octet-stream"',
            J2K,
            (True, "application/octet-stream", ELE, False),
        ),
        ("*/*", J2K, (True, "application/octet-stream", ELE, False)),
        ("", JLS, (True, "application/octet-stream", ELE, False)),
        ("multipart/related", ILE, (True, "application/octet-stream", ELE, True)),
        # Native stored data is sent as is whatever little-endian syntax is asked for.
        (
            'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2',
            ELE,
            (True, "application/octet-stream", ILE, True),
        ),
        # Big endian has to be swapped: never "as stored".
        (
            'multipart/related; type="application/octet-stream"',
            BE,
            (True, "application/octet-stream", ELE, False),
        ),
        # A compressed media type without parameter means its Table 8.7.3-5 default.
        ('multipart/related; type="image/jp2"', ELE, (True, "image/jp2", J2K, False)),
        ('multipart/related; type="image/jls"', JLS, (True, "image/jls", JLS, True)),
        (
            'multipart/related; type="image/jp2"; transfer-syntax=*',
            J2K,
            (True, "image/jp2", J2K, True),
        ),
        (
            'multipart/related; type="image/jp2"; transfer-syntax=*',
            ELE,
            (True, "image/jp2", J2K, False),
        ),
        ('multipart/related; type="image/dicom-rle"', ELE, (True, "image/dicom-rle", RLE, False)),
        # q-values: the better range wins when it can be served.
        (
            'multipart/related; type="image/jls"; q=0.4, multipart/related; '
            'type="application/octet-stream"; transfer-syntax=*',
            J2K,
            (True, "image/jp2", J2K, True),
        ),
        # Single part for one frame.
        ("application/octet-stream", ELE, (False, "application/octet-stream", ELE, True)),
        ("image/jp2", J2K, (False, "image/jp2", J2K, True)),
        ("image/*", J2K, (False, "image/jp2", J2K, True)),
    ],
)
def test_choice(accept: str, stored: str, expected: tuple[bool, str, str, bool]) -> None:
    choice = choose(accept, stored)
    assert (choice.multipart, choice.media_type, choice.transfer_syntax, choice.stored) == expected


def test_content_type_carries_the_transfer_syntax() -> None:
    choice = choose('multipart/related; type="application/octet-stream"; transfer-syntax=*', J2K)
    assert choice.content_type == f"image/jp2; transfer-syntax={J2K}"


def test_unavailable_first_choice_falls_back_to_the_next() -> None:
    accept = (
        'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50, '
        'multipart/related; type="application/octet-stream"; q=0.5'
    )
    choice = choose(accept, J2K)
    assert (choice.media_type, choice.transfer_syntax) == ("application/octet-stream", ELE)


@pytest.mark.parametrize(
    "accept",
    [
        # A lossy target the server never produces from other data.
        f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}',
        # Default of image/jpeg is lossless JPEG SV1, which there is no encoder for here.
        'multipart/related; type="image/jpeg"',
        # A transfer syntax that does not belong to the media type.
        f'multipart/related; type="image/jp2"; transfer-syntax={JLS}',
        # octet-stream is uncompressed (Table 8.7.3-4) or, with *, the stored bytes.
        f'multipart/related; type="application/octet-stream"; transfer-syntax={J2K}',
        "application/dicom",
        "text/html",
        'multipart/related; type="application/octet-stream"; q=0',
    ],
)
def test_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        choose(accept, J2K_LOSSY)


def test_decoding_impossible_is_not_acceptable_with_a_hint() -> None:
    with pytest.raises(NotAcceptable) as error:
        choose('multipart/related; type="application/octet-stream"', J2K, can=nothing)
    assert "transfer-syntax=*" in error.value.message


def test_single_part_cannot_carry_several_frames() -> None:
    with pytest.raises(NotAcceptable) as error:
        choose("application/octet-stream", ELE, frames=3)
    assert "one frame" in error.value.message
    # The multipart alternative is still chosen when offered.
    choice = choose("application/octet-stream, multipart/related; q=0.5", ELE, frames=3)
    assert choice.multipart


def test_jpeg_lossless_default_when_stored_so() -> None:
    choice = choose('multipart/related; type="image/jpeg"', JPEG_LOSSLESS_SV1, can=nothing)
    assert (choice.transfer_syntax, choice.stored) == (JPEG_LOSSLESS_SV1, True)
