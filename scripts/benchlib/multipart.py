"""multipart/related bodies (PS3.18 Section 8.6.1.2): STOW requests and WADO-RS answers."""

from __future__ import annotations

BOUNDARY = "bench-9f2c41d7"
STOW_CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def stow_body(instances: list[bytes]) -> bytes:
    """One STOW-RS request body holding `instances` as application/dicom parts."""
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    pieces: list[bytes] = []
    for data in instances:
        pieces += [head, data, b"\r\n"]
    pieces.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(pieces)


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a multipart Content-Type header value."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"').encode("latin-1")
    raise ValueError(f"no boundary in {content_type!r}")


def parts(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body into (lower-cased part headers, content) pairs."""
    delimiter = b"--" + boundary_of(content_type)
    result: list[tuple[dict[str, str], bytes]] = []
    position = body.find(delimiter)
    if position < 0:
        raise ValueError("multipart body without its boundary")
    while True:
        position += len(delimiter)
        if body[position : position + 2] == b"--":
            return result
        head_end = body.index(b"\r\n\r\n", position)
        headers: dict[str, str] = {}
        for line in body[position:head_end].decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        start = head_end + 4
        end = body.index(b"\r\n" + delimiter, start)
        result.append((headers, body[start:end]))
        position = end + 2


def first_part(body: bytes, content_type: str) -> bytes:
    """The content of the first part, as a viewer's frame loader uses it."""
    found = parts(body, content_type)
    if not found:
        raise ValueError("multipart body without parts")
    return found[0][1]
