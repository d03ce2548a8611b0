"""Content negotiation: pick the representation a client accepts (PS3.18 8.7, RFC 9110 12.5.1).

The ``accept`` query parameter of PS3.18 8.3.3.1 is honoured as well as the ``Accept``
header (dcm4che's ``wadors`` sends ``Accept: */*`` and puts the real choice in ``?accept=``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.requests import Request

from dicomweb_server.api.media import MediaRange, parse_accept
from dicomweb_server.errors import NotAcceptable


@dataclass(frozen=True, slots=True)
class Offer:
    """A representation a resource can produce; ``part_type`` for multipart/related."""

    media_type: str
    part_type: str | None = None

    def describe(self) -> str:
        if self.part_type:
            return f'{self.media_type}; type="{self.part_type}"'
        return self.media_type


def accept_ranges(request: Request) -> list[MediaRange]:
    """The client's media ranges, best first; empty when it expressed no preference."""
    values = request.query_params.getlist("accept")
    if not values:
        values = request.headers.getlist("accept")
    return parse_accept(values)


def _admits(media: MediaRange, offer: Offer) -> bool:
    if media.q <= 0 or not media.matches(offer.media_type):
        return False
    if offer.part_type and media.essence == offer.media_type:
        wanted = media.params.get("type")
        if wanted and wanted.lower() != offer.part_type.lower():
            return False
    return True


def negotiate(
    ranges: Sequence[MediaRange], offers: Sequence[Offer]
) -> tuple[Offer, MediaRange | None]:
    """The best offer for the client's ranges, and the range that selected it.

    Ties in quality go to the more specific range, then to the server's order of offers
    (the first offer is the resource's default). Raises :class:`NotAcceptable`.
    """
    if not ranges:
        return offers[0], None
    best: tuple[tuple[float, int, int], Offer, MediaRange] | None = None
    for index, offer in enumerate(offers):
        for media in ranges:
            if not _admits(media, offer):
                continue
            specificity = 0 if media.type == "*" else 1 if media.subtype == "*" else 2
            score = (media.q, specificity, -index)
            if best is None or score > best[0]:
                best = (score, offer, media)
    if best is None:
        wanted = ", ".join(
            media.essence + "".join(f"; {k}={v}" for k, v in media.params.items())
            for media in ranges
        )
        offered = ", ".join(offer.describe() for offer in offers)
        raise NotAcceptable(f"cannot produce any of [{wanted}]; this resource offers {offered}")
    return best[1], best[2]
