"""Reading what upstream servers send, within bounds they cannot move.

- :func:`read_limited` reads a streamed ``httpx`` response and decodes its
  ``Content-Encoding`` itself, chunk by chunk, never producing more than ``limit`` decoded
  bytes: a small gzip body that inflates a thousandfold is refused after ``limit`` bytes,
  not after it filled memory (httpx's own decoder inflates a whole network chunk at once).
  Only the encodings we ask for are accepted (:data:`ACCEPT_ENCODING`).
- :func:`header_count` reads a count from a header (``X-RateLimit-Remaining``,
  ``Content-Length``) whatever its length.
"""

from __future__ import annotations

import zlib

import httpx

ACCEPT_ENCODING = "gzip, deflate"


def header_count(value: str) -> int | None:
    """A header's decimal count, of any length: ``int()`` refuses more than 4,300 digits,
    so a longer one is read as 10**18 (more than anything counts). None if the value is
    not a count."""
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()):
        return None
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else 10**18


class UpstreamBodyError(Exception):
    """The body is over the limit (``too_large``) or not decodable (``undecodable``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Identity:
    unconsumed_tail = b""
    eof = True

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        return data


def _decoder(encoding: str) -> zlib._Decompress | _Identity:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return _Identity()
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise UpstreamBodyError("undecodable", f"unsupported Content-Encoding {encoding!r}")


async def read_limited(response: httpx.Response, limit: int) -> bytes:
    """The decoded body of a response opened with ``client.stream(...)``, or
    :class:`UpstreamBodyError`; at most ``limit`` bytes are ever held."""
    decoder = _decoder(response.headers.get("content-encoding", ""))
    body = bytearray()
    try:
        async for raw in response.aiter_raw():
            data = raw
            while data:
                # One byte past the limit is enough to know it is over.
                body += decoder.decompress(data, limit - len(body) + 1)
                if len(body) > limit:
                    raise UpstreamBodyError("too_large", f"body is larger than {limit} bytes")
                data = decoder.unconsumed_tail
    except zlib.error as exc:
        raise UpstreamBodyError("undecodable", f"body does not decode: {exc}") from None
    if not decoder.eof:
        raise UpstreamBodyError("undecodable", "compressed body ends early")
    return bytes(body)
