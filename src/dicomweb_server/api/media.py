"""Media types: parsing Content-Type and Accept, quoted or unquoted (RFC 9110 8.3, 12.5.1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dicomweb_server.errors import BadRequest


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One media type or range with its parameters (names lower-cased) and quality."""

    type: str
    subtype: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def essence(self) -> str:
        return f"{self.type}/{self.subtype}"

    def matches(self, media_type: str) -> bool:
        """Whether this range admits ``media_type`` (``*/*``, ``type/*`` or exact)."""
        main, _, sub = media_type.partition("/")
        if self.type == "*":
            return True
        if self.type != main:
            return False
        return self.subtype in ("*", sub)


def _split_unquoted(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            else:
                out.append(char)
        return "".join(out)
    return value


def parse_media_type(text: str) -> MediaRange:
    """Parse one media type with parameters; raises :class:`BadRequest` when malformed."""
    pieces = _split_unquoted(text, ";")
    essence = pieces[0].strip().lower()
    main, slash, sub = essence.partition("/")
    if not slash or not main or not sub or " " in essence:
        raise BadRequest(f"malformed media type {text.strip()!r}")
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        if not piece.strip():
            continue
        name, equals, value = piece.partition("=")
        if not equals:
            raise BadRequest(f"malformed media type parameter {piece.strip()!r}")
        name = name.strip().lower()
        value = _unquote(value)
        if name == "q":
            try:
                q = float(value)
            except ValueError as exc:
                raise BadRequest(f"malformed quality value {value!r}") from exc
            if not 0.0 <= q <= 1.0:
                raise BadRequest(f"quality value {value!r} out of range")
            continue
        params[name] = value
    return MediaRange(main, sub, params, q)


def parse_accept(values: list[str]) -> list[MediaRange]:
    """All media ranges of one or more Accept values, best first (stable for equal q).

    Malformed entries are skipped: PS3.18 8.7.7 says invalid Accept values are ignored.
    """
    ranges: list[MediaRange] = []
    for value in values:
        for item in _split_unquoted(value, ","):
            if item.strip():
                try:
                    ranges.append(parse_media_type(item))
                except BadRequest:
                    continue
    return sorted(ranges, key=lambda media: -media.q)
