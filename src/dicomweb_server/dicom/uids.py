"""UID grammar checks (PS3.5 Section 9.1).

STOW-RS must refuse instances whose identifying UIDs are malformed: they become path segments
of every WADO-RS URL (PS3.18 Section 10.4.1) and primary keys of the index, so a UID that is
not a UID (an empty string, a backslash-separated pair, a value with a trailing space) would
make the instance unaddressable.
"""

from __future__ import annotations

import re

__all__ = ["MAX_UID_LENGTH", "is_valid_uid"]

#: PS3.5 Section 9.1: "the total length of a UID shall not exceed 64 characters".
MAX_UID_LENGTH = 64

# PS3.5 Section 9.1: components are decimal numbers (ASCII digits only, hence [0-9] rather
# than \d, which would admit any Unicode digit) separated by ".", no component is empty and
# "the first digit of each component shall not be zero unless the component is a single
# digit".
_UID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


def is_valid_uid(value: str) -> bool:
    """Return whether `value` satisfies the UID grammar of PS3.5 Section 9.1.

    Parameters
    ----------
    value : str
        The candidate UID, exactly as it will be stored: padding (the trailing NUL that
        PS3.5 Section 9.1 allows on the wire) must already have been removed by the caller.

    Returns
    -------
    bool
        ``True`` when `value` is 1 to 64 characters of digit components separated by single
        periods, with no leading zero in a multi-digit component.

    Notes
    -----
    Only the syntax is checked; the standard also requires the root to be registered, which
    no receiver can verify.
    """
    return 0 < len(value) <= MAX_UID_LENGTH and _UID_RE.fullmatch(value) is not None
