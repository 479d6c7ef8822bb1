"""Starlette's CORS middleware, answering preflights like the rest of the API.

The middleware answers a preflight (``OPTIONS`` with ``Access-Control-Request-Method``)
itself, outside the app and its :class:`~avatar_shared.web.guard.ResponseGuard`: in plain
text (``Disallowed CORS origin``) and without the security headers. Here a refused
preflight is ``400 {"error": "cors_refused", "message": "Disallowed CORS origin"}``, and
every preflight answer carries the security headers. What is allowed is Starlette's
decision, unchanged.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from avatar_shared.web.guard import SECURITY_HEADERS


class JsonCors(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        decided = super().preflight_response(request_headers)
        headers = {k: v for k, v in decided.headers.items() if k not in _BODY_HEADERS}
        headers |= {name.decode(): value.decode() for name, value in SECURITY_HEADERS}
        if decided.status_code == 200:
            return Response(status_code=200, headers=headers)
        message = bytes(decided.body).decode()
        return JSONResponse(
            {"error": "cors_refused", "message": message}, decided.status_code, headers
        )


_BODY_HEADERS = frozenset({"content-length", "content-type"})
