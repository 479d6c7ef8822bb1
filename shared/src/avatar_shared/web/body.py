"""Request bodies read with a ceiling: nothing past ``limit`` bytes is ever buffered.

A declared ``Content-Length`` over the limit is refused before a byte is read; a chunked
or lying body is refused as soon as what arrived passes the limit. Both are
``413 {"error": "body_too_large"}``.
"""

from __future__ import annotations

from starlette.requests import Request

from avatar_shared.web.errors import ApiError


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"request body is larger than {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise body_too_large(limit)
    return bytes(body)
