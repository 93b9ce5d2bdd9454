"""The console's actions: plain form posts that work without JavaScript.

Each calls the same service operation as its REST endpoint (``cancel``, ``retry``, an
event for a waiting step, a definition's retirement), after the same token check (a write
token when tokens are configured). A done action answers ``303 See Other`` back to its
page, which says what happened; a refused one shows the page again with the reason, and
the status the REST API would have answered (401, 403, 404, 409, 422, 503).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from coordinator.console.access import COOKIE, cross_site, safe_next, write_refusal
from coordinator.console.pages import definition_view, saga_page
from coordinator.console.views import console_context, render
from coordinator.engine.messages import Transition
from coordinator.errors import AdapterError, SagaError, SagaNotFound

__all__ = ["DefinitionRetirement", "EventDelivery", "router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/ui", include_in_schema=False)

MAX_FORM_BYTES = 256 * 1024
NOT_AVAILABLE = "not available in this version of the coordinator"


@runtime_checkable
class EventDelivery(Protocol):
    """The service operation behind ``POST /v1/sagas/{id}/events``."""

    async def deliver_event(
        self, saga_id: str, event: str, body: dict[str, Any], message_id: str | None
    ) -> Transition: ...


@runtime_checkable
class DefinitionRetirement(Protocol):
    """The service operation behind ``POST /v1/definitions/{name}/retire``."""

    async def retire_definition(self, name: str) -> None: ...


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def _refused(request: Request) -> tuple[str, int] | None:
    """Why the post may not act (message, status), or None."""
    if cross_site(request):
        return "This form was sent from another site: refused.", 403
    refusal = write_refusal(console_context(request).access(request))
    return (refusal.message, refusal.status) if refusal else None


async def _refusal_page(request: Request, saga_id: str, message: str, status: int) -> Response:
    """The saga's page with why the action was refused; only the message for a caller who
    may not read the saga either."""
    if not console_context(request).access(request).can_read:
        return render(request, "message.html", {"title": "Refused", "message": message}, status)
    return await saga_page(request, saga_id, message=message, status=status)


def _back_to_saga(saga_id: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"/ui/sagas/{quote(saga_id, safe='')}?done={done}", status_code=303)


async def _apply(request: Request, saga_id: str, done: str, action: Any) -> Response:
    """Run ``action()`` (a service call returning a Transition) and answer as a page."""
    try:
        transition = await action()
    except SagaNotFound:
        values = {"title": "Saga not found", "message": f"No saga has the id {saga_id!r}."}
        return render(request, "message.html", values, status=404)
    except (AdapterError, SagaError) as exc:
        log.warning("console %s of saga %s: %s", done, saga_id, exc)
        message = f"Not done: {exc}. Try again in a moment."
        return await saga_page(request, saga_id, message=message, status=503)
    if transition.refused is not None:
        return await saga_page(
            request, saga_id, message=f"Refused: {transition.refused}", status=409
        )
    return _back_to_saga(saga_id, done)


@router.post("/sagas/{saga_id}/cancel")
async def cancel(request: Request, saga_id: str) -> Response:
    if (refused := _refused(request)) is not None:
        return await _refusal_page(request, saga_id, *refused)
    form = await _form(request)
    reason = form.get("reason", "").strip()
    if not reason:
        return await saga_page(request, saga_id, message="A cancel needs a reason.", status=422)
    service = console_context(request).api.service
    return await _apply(request, saga_id, "cancel", lambda: service.cancel(saga_id, reason[:2000]))


@router.post("/sagas/{saga_id}/retry")
async def retry(request: Request, saga_id: str) -> Response:
    if (refused := _refused(request)) is not None:
        return await _refusal_page(request, saga_id, *refused)
    service = console_context(request).api.service
    return await _apply(request, saga_id, "retry", lambda: service.retry(saga_id))


@router.post("/sagas/{saga_id}/events")
async def deliver_event(request: Request, saga_id: str) -> Response:
    if (refused := _refused(request)) is not None:
        return await _refusal_page(request, saga_id, *refused)
    form = await _form(request)
    service = console_context(request).api.service
    event = form.get("event", "").strip()
    problem = None if event else "An event needs its type, e.g. payment.captured."
    try:
        body = json.loads(form.get("body", "") or "{}")
    except json.JSONDecodeError as exc:
        problem = f"The body is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
    else:
        if not isinstance(body, dict):
            problem = 'The body must be a JSON object, e.g. {"approved": true}.'
    if problem is None and not isinstance(service, EventDelivery):
        problem = f"Delivering an event to a saga is {NOT_AVAILABLE}."
    if problem is not None or not isinstance(service, EventDelivery):
        return await saga_page(request, saga_id, message=problem, status=422)
    message_id = form.get("message_id", "").strip() or None
    return await _apply(
        request, saga_id, "event", lambda: service.deliver_event(saga_id, event, body, message_id)
    )


@router.post("/definitions/{name}/retire")
async def retire(request: Request, name: str) -> Response:
    if (refused := _refused(request)) is not None:
        return await definition_view(request, name, message=refused[0], status=refused[1])
    service = console_context(request).api.service
    if not isinstance(service, DefinitionRetirement):
        message = f"Retiring a definition is {NOT_AVAILABLE}."
        return await definition_view(request, name, message=message, status=501)
    try:
        await service.retire_definition(name)
    except SagaError as exc:
        return await definition_view(request, name, message=f"Not done: {exc}", status=409)
    notice = (
        "Retired: its trigger no longer starts sagas; registering a new version makes it active."
    )
    return await definition_view(request, name, notice=notice)


@router.post("/signin")
async def sign_in(request: Request) -> Response:
    if cross_site(request):
        return render(
            request,
            "message.html",
            {"title": "Refused", "message": "This form was sent from another site."},
            status=403,
        )
    form = await _form(request)
    token = form.get("token", "").strip()
    tokens = console_context(request).api.tokens
    if not token or tokens.scope_of(token) is None:
        values = {
            "title": "Sign in",
            "message": "That token is not known.",
            "next": safe_next(form.get("next")),
        }
        return render(request, "signin.html", values, status=401)
    response = RedirectResponse(safe_next(form.get("next")), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/signout")
async def sign_out(request: Request) -> Response:
    response = RedirectResponse("/ui", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response
