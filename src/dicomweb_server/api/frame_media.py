"""Which representation of pixel data frames to send: media type and transfer syntax.

PS3.18 8.7.3.3 pairs each bulk data media type with transfer syntaxes (Table 8.7.3-4 for
uncompressed ``application/octet-stream``, Table 8.7.3-5 for compressed types, each with a
default); a client names a media type, optionally a ``transfer-syntax`` parameter, and ``*``
for "whatever is stored". The client's ranges are tried best first, and the first one that
the stored frame can satisfy, as stored or by transcoding, wins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dicomweb_server.api.media import MediaRange
from dicomweb_server.dicom.transfer_syntax import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    FRAME_MEDIA_TYPES,
    bulk_media_type,
    is_uncompressed,
)
from dicomweb_server.errors import NotAcceptable

OCTET_STREAM = "application/octet-stream"
ANY = "*"

#: The RESTful default transfer syntax of each compressed media type (PS3.18 Table 8.7.3-5).
DEFAULT_SYNTAX: dict[str, str] = {
    OCTET_STREAM: EXPLICIT_VR_LITTLE_ENDIAN,
    "image/jpeg": "1.2.840.10008.1.2.4.70",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "video/mpeg2": "1.2.840.10008.1.2.4.100",
    "video/mp4": "1.2.840.10008.1.2.4.102",
    "video/h265": "1.2.840.10008.1.2.4.107",
}


@dataclass(frozen=True, slots=True)
class FrameChoice:
    """The representation chosen for a frames response.

    ``stored`` means the frame bytes go out as they are in the file (after byte-order or
    bit-alignment fixes for native data); otherwise they are transcoded to ``transfer_syntax``.
    """

    multipart: bool
    media_type: str
    transfer_syntax: str
    stored: bool

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def _media_of(syntax: str) -> str:
    return OCTET_STREAM if is_uncompressed(syntax) else bulk_media_type(syntax)


def _target(part: str, wanted: str | None, stored: str) -> str | None:
    """The transfer syntax a (part media type, transfer-syntax parameter) pair asks for."""
    stored_media = _media_of(stored)
    if part in ("*/*", "*"):
        if wanted is None:
            return EXPLICIT_VR_LITTLE_ENDIAN
        return stored if wanted == ANY else wanted
    if part.endswith("/*"):
        family = part[:-1]
        if wanted in (None, ANY) and stored_media.startswith(family):
            return stored
        if wanted not in (None, ANY) and _media_of(wanted).startswith(family):
            return wanted
        return None
    if part == OCTET_STREAM:
        if wanted is None:
            return EXPLICIT_VR_LITTLE_ENDIAN
        if wanted == ANY:
            # What viewers send ("any syntax, I decode it myself"); the part is then labelled
            # with the stored syntax's own media type and transfer-syntax parameter.
            return stored
        return wanted if is_uncompressed(wanted) and wanted != EXPLICIT_VR_BIG_ENDIAN else None
    if part not in DEFAULT_SYNTAX:
        return None
    if wanted is None:
        return DEFAULT_SYNTAX[part]
    if wanted == ANY:
        return stored if stored_media == part else DEFAULT_SYNTAX[part]
    return wanted if FRAME_MEDIA_TYPES.get(wanted, "").lower() == part else None


def choose_frame_representation(
    ranges: Sequence[MediaRange],
    stored: str,
    frame_count: int,
    can_transcode: Callable[[str, str], bool],
) -> FrameChoice:
    """The first acceptable representation the server can produce; 406 when there is none.

    ``ranges`` are the client's media ranges, best first (empty means the default:
    multipart ``application/octet-stream`` in Explicit VR Little Endian). A single-part media
    type can carry only one frame (PS3.18 8.7.3.5.1), so it is skipped for a frame list.
    """
    requests: list[tuple[bool, str, str | None]] = []
    for media in ranges or [MediaRange("*", "*")]:
        if media.q <= 0:
            continue
        wanted = media.params.get("transfer-syntax")
        if media.essence == "multipart/related":
            part = (media.params.get("type") or OCTET_STREAM).lower()
            requests.append((True, part, wanted))
        elif media.essence in ("*/*", "multipart/*"):
            requests.append((True, "*/*", wanted))
        elif frame_count == 1:
            requests.append((False, media.essence, wanted))
    for multipart, part, wanted in requests:
        target = _target(part, wanted, stored)
        if target is None:
            continue
        as_stored = target == stored or (
            is_uncompressed(target)
            and is_uncompressed(stored)
            and target != EXPLICIT_VR_BIG_ENDIAN
            and stored != EXPLICIT_VR_BIG_ENDIAN
        )
        if not as_stored and not can_transcode(stored, target):
            continue
        return FrameChoice(multipart, _media_of(target), target, as_stored)
    asked = ", ".join(
        media.essence + "".join(f"; {k}={v}" for k, v in media.params.items()) for media in ranges
    )
    single = " (a single-part type carries only one frame)" if frame_count > 1 else ""
    raise NotAcceptable(
        f"cannot deliver the frames as any of [{asked}]{single}; they are stored as "
        f'{_media_of(stored)} in {stored}: ask for multipart/related; type="{_media_of(stored)}"; '
        f'transfer-syntax=* for the stored bytes, or type="{OCTET_STREAM}" for decoded pixels'
    )
