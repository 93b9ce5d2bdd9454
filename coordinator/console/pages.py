"""The console's pages: the sagas, one saga, the definitions and one definition.

Every page is whole HTML that reads without JavaScript. With htmx present, the live part
of a page (the list and its counts, a saga's status, timeline, steps and history) asks for
itself again every few seconds; such a request (``HX-Request``) gets that part only.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from coordinator.adapters.queries import IN_FLIGHT_STATUSES, InvalidCursor
from coordinator.console.access import COOKIE
from coordinator.console.graph import build_graph
from coordinator.console.timeline import branches_of, build_timeline
from coordinator.console.views import console_context, render
from coordinator.definitions.graph import mermaid
from coordinator.engine.state import SagaState, SagaStatus

__all__ = ["STATUSES", "WINDOWS", "router", "saga_page"]

router = APIRouter(prefix="/ui", include_in_schema=False)

STATUSES: tuple[str, ...] = get_args(SagaStatus)
WINDOWS = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
}
PAGE_SIZE = 50
MAX_HISTORY = 1000

Text = Annotated[str, Query(max_length=1000)]


def _live(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _signin(request: Request) -> HTMLResponse:
    message = (
        "That token is not known: sign in with a read or write token."
        if request.cookies.get(COOKIE)
        else "API tokens are configured: sign in with a read or write token to use the console."
    )
    values = {"message": message, "next": request.url.path, "title": "Sign in"}
    return render(request, "signin.html", values, status=401)


@router.get("", response_class=HTMLResponse)
async def sagas_page(
    request: Request,
    definition: Text = "",
    status: Text = "",
    key: Text = "",
    since: Text = "",
    cursor: Text = "",
) -> Response:
    context = console_context(request)
    if not context.access(request).can_read:
        return _signin(request)
    notices: list[str] = []
    if status and status not in STATUSES:
        notices.append(f"Unknown status {status!r}: showing every status.")
        status = ""
    if since and since not in WINDOWS:
        notices.append(f"Unknown time window {since!r}: showing any time.")
        since = ""
    listing = partial(
        context.api.queries.list_sagas,
        definition=definition or None,
        status=status or None,
        key=key or None,
        limit=PAGE_SIZE,
    )
    try:
        page = await listing(cursor=cursor or None)
    except InvalidCursor:
        notices.append("That page link is no longer valid: showing the newest sagas.")
        cursor = ""
        page = await listing()
    rows, next_cursor = page.items, page.next_cursor
    if since:
        cutoff = datetime.now(UTC) - WINDOWS[since]
        kept = [row for row in rows if row.created_at >= cutoff]
        if len(kept) < len(rows):  # newest first: nothing older can be in the window
            rows, next_cursor = kept, None
    counts = await _counts(request, definition) if not cursor else None
    definitions = [] if _live(request) else await _definition_names(request)
    filters = {"definition": definition, "status": status, "key": key, "since": since}
    values: dict[str, Any] = {
        "title": "Sagas",
        "rows": rows,
        "next_cursor": next_cursor,
        "cursor": cursor,
        "counts": counts,
        "filters": filters,
        "filtered": any(filters.values()),
        "definitions": definitions,
        "statuses": STATUSES,
        "windows": list(WINDOWS),
        "notices": notices,
    }
    return render(request, "_sagas_live.html" if _live(request) else "sagas.html", values)


async def _definition_names(request: Request) -> list[str]:
    latest = await console_context(request).api.store.latest_definitions()
    return sorted(stored.definition.name for stored in latest)


async def _counts(request: Request, definition: str) -> dict[str, int] | None:
    counts = console_context(request).counts
    if counts is None:
        return None
    totals: Counter[str] = Counter()
    for (name, status), count in (await counts()).items():
        if not definition or name == definition:
            totals[status] += count
    return {status: totals.get(status, 0) for status in IN_FLIGHT_STATUSES}


@router.get("/sagas/{saga_id}", response_class=HTMLResponse)
async def saga_view(request: Request, saga_id: str) -> Response:
    if not console_context(request).access(request).can_read:
        return _signin(request)
    return await saga_page(request, saga_id, live=_live(request))


async def saga_page(
    request: Request,
    saga_id: str,
    *,
    live: bool = False,
    message: str | None = None,
    notice: str | None = None,
    status: int = 200,
) -> Response:
    """One saga's page (or its live part), with an action's outcome when there is one."""
    context = console_context(request)
    state = await context.api.store.load_saga(saga_id[:200])
    if state is None:
        missing = {"title": "Saga not found", "message": f"No saga has the id {saga_id!r}."}
        return render(request, "message.html", missing, status=404)
    stored = await context.api.store.get_definition(state.definition, state.definition_version)
    statuses = {step.name: step.status for step in state.steps}
    done = request.query_params.get("done")
    values: dict[str, Any] = {
        "title": f"Saga {state.definition} {state.key or state.id}",
        "saga": state,
        "timeline": build_timeline(
            state, datetime.now(UTC), branches_of(stored.definition) if stored else None
        ),
        "history": _history(state),
        "graph": build_graph(stored.definition, statuses) if stored else None,
        "mermaid": mermaid(stored.definition) if stored else None,
        "message": message,
        "notice": notice or _DONE.get(done or ""),
        "actions": _actions(state),
        "live_refresh": state.status in ("running", "compensating"),
        "partial": live,
    }
    return render(request, "_saga_live.html" if live else "saga.html", values, status=status)


_DONE = {
    "cancel": "Cancel requested: the running step is aborted and the saga compensates.",
    "retry": "Retry requested: the saga resumes where it stopped.",
    "event": "Event delivered to the saga.",
}


def _history(state: SagaState) -> list[Any]:
    entries = sorted(state.history, key=lambda entry: entry.at)
    return entries[-MAX_HISTORY:]


def _actions(state: SagaState) -> dict[str, bool]:
    return {
        "cancel": state.status == "running",
        "retry": state.status == "failed",
        "event": state.status == "running",
    }


@router.get("/definitions", response_class=HTMLResponse)
async def definitions_page(request: Request) -> Response:
    context = console_context(request)
    if not context.access(request).can_read:
        return _signin(request)
    latest = sorted(await context.api.store.latest_definitions(), key=lambda s: s.definition.name)
    return render(request, "definitions.html", {"title": "Definitions", "items": latest})


@router.get("/definitions/{name}", response_class=HTMLResponse)
async def definition_page(
    request: Request, name: str, version: Annotated[int | None, Query(ge=1)] = None
) -> Response:
    return await definition_view(request, name[:100], version)


async def definition_view(
    request: Request,
    name: str,
    version: int | None = None,
    *,
    message: str | None = None,
    notice: str | None = None,
    status: int = 200,
) -> Response:
    context = console_context(request)
    if not context.access(request).can_read:
        return _signin(request)
    versions = sorted(
        await context.api.store.definition_versions(name), key=lambda s: s.definition.version
    )
    chosen = next((s for s in versions if s.definition.version == version), None)
    if not versions or (version is not None and chosen is None):
        what = f"{name!r} version {version}" if version else repr(name)
        missing = {"title": "Definition not found", "message": f"No definition {what}."}
        return render(request, "message.html", missing, status=404)
    shown = chosen or versions[-1]
    values: dict[str, Any] = {
        "title": f"Definition {name}",
        "name": name,
        "versions": versions,
        "shown": shown,
        "graph": build_graph(shown.definition),
        "mermaid": mermaid(shown.definition),
        "message": message,
        "notice": notice,
    }
    return render(request, "definition.html", values, status=status)
