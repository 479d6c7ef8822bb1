"""Every error leaves the HTTP services as JSON: ``{"error", "message", "field"?}``.

``error`` is a stable machine-readable code, ``message`` is for people, ``field`` names
the offending input when there is one. A body that is not JSON is 400; validation
failures are 422 and name each field; a method the path does not take is 405 with every
method it does take in ``Allow``. Unexpected exceptions are turned into a JSON 500 by
:class:`avatar_shared.web.guard.ResponseGuard`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorBody(BaseModel):
    error: str
    message: str
    field: str | None = None


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(error=error, message=message, field=field)
        self.headers = dict(headers or {})


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        exc.body.model_dump(exclude_none=True), status_code=exc.status, headers=exc.headers
    )


def _location(loc: Sequence[int | str]) -> str:
    parts = [str(p) for p in loc if p not in ("query", "body", "path", "header")]
    return ".".join(parts) or "request"


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def invalid_request(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """A 422 naming each invalid field (pydantic's ``errors()``), or 400 for non-JSON."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return bad_request("body is not valid JSON")
    fields = [_location(e["loc"]) for e in errors]
    message = "; ".join(f"{f}: {e['msg']}" for f, e in zip(fields, errors, strict=True))
    return ApiError(422, "invalid_request", message, field=fields[0] if fields else None)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(invalid_request(exc.errors()))


def allowed_methods(request: Request) -> str:
    """Every method some route takes at this path, for ``Allow`` (Starlette names only
    the first route that matched the path)."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        path_regex = getattr(route, "path_regex", None)
        if path_regex is not None and path_regex.match(request.url.path):
            methods.update(route.methods or ())
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "http_error"
    )
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    body = ErrorBody(error=code, message=str(exc.detail))
    return JSONResponse(body.model_dump(exclude_none=True), exc.status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses=`` entries for the given error statuses."""
    return {status: {"model": ErrorBody} for status in statuses}
