"""The console's shared pieces: its context on the app, the templates and their filters.

``ConsoleContext`` holds the REST API's ``ApiContext`` (the same store, service and
listing the ``/v1`` routes use, so the console reads and acts exactly as they do), the
optional counts of the sagas in flight, and the templates. ``render`` draws a page with
the values every page needs (who is signed in, whether htmx is there).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from coordinator.api.context import ApiContext
from coordinator.console.access import Access, read_access
from coordinator.console.timeline import format_seconds

__all__ = ["STATE_KEY", "ConsoleContext", "Counts", "console_context", "render"]

STATE_KEY = "saga_console"
HERE = Path(__file__).resolve().parent
MAX_JSON_CHARS = 20_000

Counts = Callable[[], Awaitable[Mapping[tuple[str, str], int]]]
"""``{(definition, status): count}`` of the sagas in flight (``SagaQueries.in_flight``)."""

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class ConsoleContext:
    api: ApiContext
    counts: Counts | None
    templates: Jinja2Templates
    htmx: bool
    """Whether the vendored htmx is there (live refresh); the console works without it."""

    def access(self, request: Request) -> Access:
        return read_access(request, self.api.tokens)


def console_context(request: Request) -> ConsoleContext:
    context = getattr(request.app.state, STATE_KEY, None)
    if not isinstance(context, ConsoleContext):
        raise RuntimeError("the console is not installed: call install_console(app, ...)")
    return context


def render(
    request: Request,
    name: str,
    values: dict[str, Any],
    status: int = 200,
) -> HTMLResponse:
    context = console_context(request)
    response = context.templates.TemplateResponse(
        request,
        name,
        {
            "access": context.access(request),
            "htmx": context.htmx,
            "now": datetime.now(UTC),
            **values,
        },
        status_code=status,
        headers=_SECURITY_HEADERS,
    )
    return response


# -- filters ----------------------------------------------------------------------------
def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _age(value: datetime | None) -> str:
    if value is None:
        return ""
    seconds = max((datetime.now(UTC) - value).total_seconds(), 0.0)
    return format_seconds(seconds) + " ago" if seconds >= 1 else "just now"


def _pretty(value: Any) -> str:
    text = json.dumps(value, indent=2, sort_keys=False, default=str, ensure_ascii=False)
    if len(text) > MAX_JSON_CHARS:
        return text[:MAX_JSON_CHARS] + f"\n… ({len(text) - MAX_JSON_CHARS} more characters)"
    return text


def _offset(value: datetime, start: datetime) -> str:
    return "+" + format_seconds(max((value - start).total_seconds(), 0.0))


def _compact(value: Any) -> str:
    if not value:
        return ""
    text = json.dumps(value, default=str, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= 160 else text[:157] + "…"


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=HERE / "templates")
    filters = templates.env.filters
    filters["when"] = _when
    filters["age"] = _age
    filters["pretty"] = _pretty
    filters["offset"] = _offset
    filters["compact"] = _compact
    filters["seconds"] = format_seconds
    return templates
