"""Media type parsing and negotiation."""

from __future__ import annotations

import pytest

from dicomweb_server.api.media import parse_accept, parse_media_type
from dicomweb_server.api.negotiation import Offer, negotiate
from dicomweb_server.errors import BadRequest, NotAcceptable


def test_parameters_quoted_or_not_case_insensitive_names() -> None:
    media = parse_media_type('Multipart/Related; Type="application/dicom"; boundary="a;b"')
    assert media.essence == "multipart/related"
    assert media.params == {"type": "application/dicom", "boundary": "a;b"}
    assert parse_media_type("multipart/related; type=application/dicom").params["type"] == (
        "application/dicom"
    )


@pytest.mark.parametrize("text", ["", "text", "a/b; q=2", "a/b; noequals", "a /b"])
def test_malformed(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_media_type(text)
    # In Accept, invalid entries are ignored (PS3.18 8.7.7); the valid ones still count.
    assert [media.essence for media in parse_accept([f"{text}, application/dicom+json"])] == [
        "application/dicom+json"
    ]


def test_q_values_order_and_exclusion() -> None:
    offers = [Offer("application/dicom+json"), Offer("multipart/related", "application/dicom+xml")]
    ranges = parse_accept(
        ['multipart/related; type="application/dicom+xml"; q=0.9, application/dicom+json; q=0.5']
    )
    assert negotiate(ranges, offers)[0] == offers[1]
    assert negotiate(parse_accept(["*/*"]), offers)[0] == offers[0]
    assert negotiate([], offers)[0] == offers[0]
    with pytest.raises(NotAcceptable):
        negotiate(parse_accept(["application/dicom+json; q=0, image/png"]), offers)
    with pytest.raises(NotAcceptable):
        negotiate(parse_accept(['multipart/related; type="image/png"']), offers)
