"""livekit-server's de-duplication of data packets, as ``UserPacketDeduper`` in its
``pkg/rtc`` does it, for the LiveKit doubles.

Per room: a nonce that is not 16 bytes (not a UUID) is never a duplicate; otherwise it
is one if it is among the last 100 nonces kept (the newest is the "head"; the oldest is
forgotten once 100 are kept). The server answers a duplicate like any other packet and
forwards nothing.
"""

from __future__ import annotations

MAX_SIZE = 100
_ZERO = bytes(16)


class PacketDeduper:
    def __init__(self) -> None:
        self._seen: dict[bytes, bytes] = {}  # each nonce -> the one that came after it
        self._head = _ZERO
        self._tail = _ZERO

    def is_duplicate(self, nonce: bytes) -> bool:
        if len(nonce) != 16:
            return False
        if nonce == self._head or nonce in self._seen:
            return True
        self._seen[self._head] = nonce
        self._head = nonce
        if len(self._seen) == MAX_SIZE:
            tail = self._tail
            self._tail = self._seen.pop(tail)
        return False
