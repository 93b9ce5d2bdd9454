"""Every error answer of the HTTP API, as RFC 9457 problem details.

One place turns every failure into ``application/problem+json``: routing errors (404, 405),
FastAPI's request validation (422, or 400 for a body that is not JSON at all), the size
limit (413), the coordinator's own errors (``coordinator.errors``), the ``ApiProblem`` the
routes raise, and anything unexpected (500, with no internals in the body).

``install_problem_handlers(app)`` registers the handlers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from coordinator.errors import (
    AdapterError,
    DefinitionConflict,
    DefinitionError,
    DefinitionUnloadable,
    SagaError,
    SagaNotFound,
    UnknownDefinition,
    UnstorableData,
)
from coordinator.runtime.errors import SagaBusy

__all__ = [
    "PROBLEM_JSON",
    "PROBLEM_TYPE_BASE",
    "ApiProblem",
    "definition_error_items",
    "install_problem_handlers",
    "problem_response",
    "problem_type",
]

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:saga-coordinator:problem:"
"""Problems specific to the coordinator have the type ``urn:saga-coordinator:problem:<slug>``;
plain HTTP errors have ``about:blank`` (RFC 9457 §4.2.1)."""


def problem_type(slug: str | None) -> str:
    return "about:blank" if slug is None else PROBLEM_TYPE_BASE + slug


class ApiProblem(Exception):
    """Raised by a route to answer with a problem; the handler renders it."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.title = title
        self.errors = errors
        self.headers = headers


def problem_response(
    request: Request,
    status: int,
    detail: str | None = None,
    *,
    slug: str | None = None,
    title: str | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A problem response; ``title`` defaults to the status's reason phrase."""
    body: dict[str, Any] = {
        "type": problem_type(slug),
        "title": title or _phrase(status),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors is not None:
        body["errors"] = [dict(item) for item in errors]
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def definition_error_items(error: DefinitionError) -> list[dict[str, Any]]:
    """One ``{line, field, message}`` per located error of a rejected definition."""
    items: list[dict[str, Any]] = []
    for located in error.errors:
        line = getattr(located, "line", None)
        field = getattr(located, "field", None)
        message = getattr(located, "message", None)
        items.append(
            {
                "line": line if isinstance(line, int) else None,
                "field": str(field) if field else None,
                "message": str(message) if message is not None else str(located),
            }
        )
    return items


# -- the handlers -----------------------------------------------------------------------
async def _api_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiProblem)
    return problem_response(
        request,
        exc.status,
        exc.detail,
        slug=exc.slug,
        title=exc.title,
        errors=exc.errors,
        headers=exc.headers,
    )


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else None
    if detail is None or detail == _phrase(status):
        # Starlette's own errors carry only the reason phrase: say what it means here.
        if status == 404:
            detail = f"no resource at {request.url.path}"
        elif status == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        elif status == 413:
            detail = "the request body is over the size limit"
    headers = exc.headers
    if status == 405:
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return problem_response(request, status, detail, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves at this path (Starlette's own ``Allow``
    names only the methods of the first route that matched the path)."""
    allowed = {
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    }
    if "GET" in allowed:
        allowed.add("HEAD")  # HeadAsGetMiddleware
    return sorted(allowed)


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


_OMIT = object()
_MAX_VALUE_CHARS = 1000


def _json_safe(value: Any) -> Any:
    """``value`` as JSON, or ``_OMIT`` when it cannot be shown or is too large to echo."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    try:
        encoded = jsonable_encoder(value)
        text = json.dumps(encoded)
    except (TypeError, ValueError):
        return _OMIT
    return encoded if len(text) <= _MAX_VALUE_CHARS else _OMIT


def _field_path(loc: Sequence[int | str]) -> str | None:
    return ".".join(str(part) for part in loc) or None


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    raw = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in raw):
        reason = next(
            (e.get("ctx", {}).get("error") for e in raw if e.get("type") == "json_invalid"), None
        )
        return problem_response(
            request,
            400,
            f"the request body is not valid JSON: {reason}" if reason else "malformed JSON",
            slug="malformed-json",
        )
    items: list[dict[str, Any]] = []
    for error in raw:
        loc = tuple(error.get("loc", ()))
        location = loc[0] if loc and loc[0] in {"body", "query", "path", "header"} else None
        item: dict[str, Any] = {
            "field": _field_path(loc[1:] if location else loc),
            "location": location,
            "message": str(error.get("msg", "invalid")),
        }
        if error.get("type") != "missing" and "input" in error:
            value = _json_safe(error["input"])
            if value is not _OMIT:
                item["value"] = value
        items.append(item)
    return problem_response(
        request,
        422,
        "the request is invalid: see errors",
        slug="invalid-request",
        errors=items,
    )


def _saga_error_status(exc: SagaError) -> tuple[int, str]:
    if isinstance(exc, UnknownDefinition):
        return 404, "unknown-definition"
    if isinstance(exc, SagaNotFound):
        return 404, "saga-not-found"
    if isinstance(exc, DefinitionConflict):
        return 409, "definition-conflict"
    if isinstance(exc, DefinitionUnloadable):
        return 409, "definition-unloadable"
    if isinstance(exc, DefinitionError):
        return 422, "invalid-definition"
    if isinstance(exc, UnstorableData):
        return 422, "unstorable"
    if isinstance(exc, AdapterError):
        return 503, "unavailable"
    if isinstance(exc, SagaBusy):
        return 503, "busy"
    return 500, "internal"


async def _saga_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SagaError)
    status, slug = _saga_error_status(exc)
    if status == 500:
        logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return await _unexpected(request, exc)
    if status == 503:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            request,
            503,
            str(exc)
            if slug == "busy"
            else "a backing service (MongoDB or RabbitMQ) did not answer; retry later",
            slug=slug,
            headers={"Retry-After": "1"},
        )
    errors = definition_error_items(exc) if isinstance(exc, DefinitionError) else None
    return problem_response(request, status, str(exc), slug=slug, errors=errors)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette calls this handler from its outermost middleware and then re-raises the
    # exception to the server, which logs the traceback: no logging here.
    return problem_response(
        request,
        500,
        "an unexpected error occurred; it has been logged",
        slug="internal",
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` with a problem document."""
    app.add_exception_handler(ApiProblem, _api_problem)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(SagaError, _saga_error)
    app.add_exception_handler(Exception, _unexpected)
