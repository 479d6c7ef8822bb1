"""Reversible encoding of LiveKit room names into NATS subject tokens.

A subject token may not contain ``.``, ``*``, ``>`` or whitespace, and non-ASCII tokens
are legal but awkward to filter on, so a room name is encoded byte by byte over its UTF-8
form: ASCII letters, digits, ``-`` and ``_`` stand for themselves; every other byte becomes
``=`` followed by two upper-case hex digits. Readable room names stay readable in
subjects, the encoding is injective (``decode_room(encode_room(r)) == r`` for every valid
room) and a token is at most three times the room's byte length (768 characters for the
256-byte maximum).
"""

from __future__ import annotations

import functools
import re

MAX_ROOM_BYTES = 256
_ESCAPE = "="
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_TOKEN = re.compile(r"(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+")


class RoomNameError(ValueError):
    """A room name or room token is not valid."""


def check_room(room: str) -> str:
    """Return ``room`` if it is a valid LiveKit room name for this system, else raise."""
    try:
        size = len(room.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise RoomNameError("room name is not valid UTF-8 text") from exc
    if size == 0:
        raise RoomNameError("room name must not be empty")
    if size > MAX_ROOM_BYTES:
        raise RoomNameError(f"room name is {size} bytes, the limit is {MAX_ROOM_BYTES}")
    return room


@functools.lru_cache(maxsize=16_384)  # every event, key and decision of a room encodes it
def encode_room(room: str) -> str:
    """Encode a room name as one NATS subject token."""
    check_room(room)
    return "".join(
        chr(byte) if byte in _SAFE else f"{_ESCAPE}{byte:02X}" for byte in room.encode("utf-8")
    )


@functools.lru_cache(maxsize=16_384)
def decode_room(token: str) -> str:
    """Decode a subject token made by :func:`encode_room`; raise on anything else."""
    if not _TOKEN.fullmatch(token):
        raise RoomNameError("not a room token")
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == _ESCAPE:
            byte = int(token[i + 1 : i + 3], 16)
            if byte in _SAFE:
                raise RoomNameError("room token escapes a character that must stand for itself")
            raw.append(byte)
            i += 3
        else:
            raw.append(ord(token[i]))
            i += 1
    try:
        room = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RoomNameError("room token does not decode to UTF-8 text") from exc
    return check_room(room)
