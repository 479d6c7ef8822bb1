"""Which characters callers may put into text that others will see or parse.

Control characters (C0, C1, DEL) and the Unicode bidirectional controls are refused
everywhere a caller's text goes into a token or a log: they forge line breaks and make
``bob\\u202eevil`` display as something else. Free text (metadata) may still hold tabs
and line breaks; identities may hold no control, format or separator character at all.
"""

from __future__ import annotations

import re

#: Bidirectional formatting characters (Unicode TR9): embeddings, overrides, isolates, marks.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROL = "\x00-\x1f\x7f-\x9f"
_SEPARATORS = "\u2028\u2029"  # line breaks by other names
_UNSAFE = re.compile(f"[{_CONTROL}{_SEPARATORS}{_BIDI}]")
_LINE_BREAKS = str.maketrans("", "", f"\t\n\r{_SEPARATORS}")


def has_unsafe_characters(value: str, *, multiline: bool = False) -> bool:
    """Control, line-separator or bidi characters; with ``multiline``, tab and line
    breaks are allowed."""
    if multiline:
        value = value.translate(_LINE_BREAKS)
    return _UNSAFE.search(value) is not None


def is_identity_text(value: str) -> bool:
    """Printable, no spaces at either end: fit to name a participant."""
    return value.isprintable() and value == value.strip() and not has_unsafe_characters(value)
