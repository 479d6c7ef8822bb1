"""Request bodies read with a ceiling and a deadline: nothing past ``limit`` bytes is ever
buffered, and a client dripping its body cannot hold a request past ``seconds``.

A declared ``Content-Length`` over the limit is refused before a byte is read; a chunked
or lying body is refused as soon as what arrived passes the limit. Both are
``413 {"error": "body_too_large"}``; a body not in by the deadline is
``408 {"error": "body_timeout"}``.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from avatar_shared.web.errors import ApiError
from avatar_shared.web.fetch import header_count


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"request body is larger than {limit} bytes")


async def read_body(request: Request, limit: int, seconds: float) -> bytes:
    declared = header_count(request.headers.get("content-length", ""))
    if declared is not None and declared > limit:
        raise body_too_large(limit)
    body = bytearray()
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise body_too_large(limit)
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"request body did not arrive within {seconds:g} s"
        ) from None
    return bytes(body)
