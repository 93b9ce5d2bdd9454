"""``/v1/sagas``: start, list, read, cancel, retry saga instances and deliver events.

Reads go to the store (one instance) and to the listing queries (pages); every change goes
through the service, which runs the engine and persists the transition with its commands.
A transition the engine refuses (cancel after the pivot or of a finished saga, retry of a
saga that has not failed) is answered 409 with the engine's reason.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response

from coordinator.api.auth import AuthorizedRoute
from coordinator.api.context import ApiContext, get_context
from coordinator.api.problems import PROBLEM_JSON, ApiProblem
from coordinator.engine.messages import Transition
from coordinator.engine.state import Awaiting, ErrorInfo, Phase, SagaState, StepState
from coordinator.errors import SagaError
from coordinator.ports import MAX_LIMIT, InvalidCursor, SagaRow
from schemas.api import (
    AwaitOut,
    CancelRequest,
    ErrorOut,
    EventRequest,
    HistoryEntryOut,
    HistoryOut,
    PhaseOut,
    Problem,
    SagaOut,
    SagaPage,
    SagaStatus,
    SagaSummary,
    StartSagaRequest,
    StepOut,
)
from schemas.definition import Leaf, SagaDefinition

__all__ = ["router", "saga_out"]

router = APIRouter(prefix="/sagas", route_class=AuthorizedRoute, tags=["sagas"])

Context = Annotated[ApiContext, Depends(get_context)]
SagaId = Annotated[str, Path(min_length=1, max_length=200, description="The saga's id.")]

_PROBLEM: dict[str, Any] = {"model": Problem, "content": {PROBLEM_JSON: {}}}


# -- views ------------------------------------------------------------------------------
def _error(error: ErrorInfo | None) -> ErrorOut | None:
    if error is None:
        return None
    return ErrorOut(code=error.code, message=error.message, retryable=error.retryable)


def _phase(phase: Phase) -> PhaseOut:
    return PhaseOut(
        attempts=phase.attempt,
        waiting=phase.waiting,
        error=_error(phase.error),
        started_at=phase.started_at,
        finished_at=phase.finished_at,
        attempt_deadline=phase.deadline,
        next_attempt_at=phase.retry_at,
    )


def _step(state: SagaState, step: StepState, leaf: Leaf | None) -> StepOut:
    action = step.action
    group = leaf.group if leaf is not None else None
    condition = state.conditions.get(step.name)
    if condition is None and group is not None:
        condition = state.conditions.get(group)
    waits: Awaiting | None = next((a for a in state.awaiting if a.step == step.name), None)
    return StepOut(
        name=step.name,
        status=step.status,
        group=group,
        branch=leaf.branch if leaf is not None else None,
        condition=condition,
        awaiting=None
        if waits is None
        else AwaitOut(event=waits.event, value=waits.value, since=waits.since),
        output=step.output,
        attempts=action.attempt,
        error=_error(action.error),
        started_at=action.started_at,
        finished_at=action.finished_at,
        action=_phase(action),
        compensation=_phase(step.compensation) if step.compensation.attempt else None,
    )


def saga_out(state: SagaState, definition: SagaDefinition | None = None) -> SagaOut:
    """The saga's view; with its definition, each step names its group and branch."""
    leaves = {leaf.step.name: leaf for leaf in definition.leaves} if definition else {}
    return SagaOut(
        id=state.id,
        definition=state.definition,
        version=state.definition_version,
        key=state.key,
        status=state.status,
        reason=_error(state.reason),
        deadline=state.deadline,
        created_at=state.created_at,
        updated_at=state.updated_at,
        input=state.input,
        steps=[_step(state, step, leaves.get(step.name)) for step in state.steps],
    )


async def _view(context: ApiContext, state: SagaState) -> SagaOut:
    """``saga_out`` with the saga's definition, or without it when it does not load."""
    try:
        definition = await context.service.definition(state.definition, state.definition_version)
    except SagaError:
        definition = None
    return saga_out(state, definition)


def _summary(row: SagaRow) -> SagaSummary:
    return SagaSummary.model_validate(
        {
            "id": row.id,
            "definition": row.definition,
            "version": row.definition_version,
            "key": row.key,
            "status": row.status,
            "reason": _error(row.reason),
            "deadline": row.deadline,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }
    )


async def require_json(request: Request) -> None:
    """A body, when sent, must be JSON: anything else is 415, not a confusing 422."""
    has_body = request.headers.get("content-length", "0") != "0" or (
        "transfer-encoding" in request.headers
    )
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if has_body and not (media == "application/json" or media.endswith("+json")):
        raise ApiProblem(
            415,
            f"the body must be application/json, not {media or 'without Content-Type'}",
            slug="unsupported-media-type",
            headers={"Accept-Post": "application/json"},
        )


JsonBody = [Depends(require_json)]


def _not_found(saga_id: str) -> ApiProblem:
    return ApiProblem(404, f"no saga with id {saga_id!r}", slug="saga-not-found")


async def _accepted(context: ApiContext, transition: Transition) -> SagaOut:
    if transition.refused is not None:
        raise ApiProblem(409, transition.refused, slug="transition-refused")
    return await _view(context, transition.state)


# -- routes -----------------------------------------------------------------------------
@router.post(
    "",
    response_model=SagaOut,
    status_code=201,
    summary="Start a saga",
    dependencies=JsonBody,
    responses={
        200: {"model": SagaOut, "description": "The key was used before: the existing saga"},
        201: {"description": "Started"},
        404: _PROBLEM,
        415: _PROBLEM,
        422: _PROBLEM,
        503: _PROBLEM,
    },
)
async def start_saga(
    body: StartSagaRequest,
    response: Response,
    context: Context,
    traceparent: Annotated[
        str | None,
        Header(
            description="W3C trace context carried to every command of the saga; "
            "a fresh one is made when absent or invalid.",
        ),
    ] = None,
) -> SagaOut:
    state, created = await context.service.start_saga(
        body.definition,
        body.input,
        version=body.version,
        key=body.key,
        source="api",
        traceparent=traceparent,
    )
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/sagas/{state.id}"
    return await _view(context, state)


@router.get(
    "",
    response_model=SagaPage,
    summary="List sagas, newest first",
    responses={422: _PROBLEM},
)
async def list_sagas(
    context: Context,
    definition: Annotated[str | None, Query(max_length=63)] = None,
    status: Annotated[SagaStatus | None, Query()] = None,
    key: Annotated[str | None, Query(max_length=1000)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=1000, description="`next_cursor` of the previous page.")
    ] = None,
) -> SagaPage:
    try:
        page = await context.queries.list_sagas(
            definition=definition, status=status, key=key, limit=limit, cursor=cursor
        )
    except InvalidCursor as exc:
        raise ApiProblem(
            422,
            str(exc),
            slug="invalid-request",
            errors=[{"field": "cursor", "location": "query", "value": cursor, "message": str(exc)}],
        ) from exc
    return SagaPage(items=[_summary(row) for row in page.items], next_cursor=page.next_cursor)


@router.get("/{saga_id}", response_model=SagaOut, summary="One saga", responses={404: _PROBLEM})
async def get_saga(saga_id: SagaId, context: Context) -> SagaOut:
    state = await context.store.load_saga(saga_id)
    if state is None:
        raise _not_found(saga_id)
    return await _view(context, state)


@router.get(
    "/{saga_id}/history",
    response_model=HistoryOut,
    summary="A saga's transitions and received messages, oldest first",
    responses={404: _PROBLEM},
)
async def get_history(saga_id: SagaId, context: Context) -> HistoryOut:
    state = await context.store.load_saga(saga_id)
    if state is None:
        raise _not_found(saga_id)
    entries = sorted(state.history, key=lambda entry: entry.at)  # stable: keeps ties in order
    return HistoryOut(
        saga_id=state.id,
        items=[HistoryEntryOut.model_validate(entry.model_dump()) for entry in entries],
    )


@router.post(
    "/{saga_id}/cancel",
    response_model=SagaOut,
    status_code=202,
    summary="Cancel a saga: abort the running step and compensate",
    dependencies=JsonBody,
    responses={404: _PROBLEM, 409: _PROBLEM, 415: _PROBLEM, 422: _PROBLEM, 503: _PROBLEM},
)
async def cancel_saga(saga_id: SagaId, body: CancelRequest, context: Context) -> SagaOut:
    return await _accepted(context, await context.service.cancel(saga_id, body.reason))


@router.post(
    "/{saga_id}/retry",
    response_model=SagaOut,
    status_code=202,
    summary="Resume a failed saga where it stopped",
    responses={404: _PROBLEM, 409: _PROBLEM, 503: _PROBLEM},
)
async def retry_saga(saga_id: SagaId, context: Context) -> SagaOut:
    return await _accepted(context, await context.service.retry(saga_id))


@router.post(
    "/{saga_id}/events",
    response_model=SagaOut,
    status_code=202,
    summary="Deliver an event to the saga's waiting `await` step (e.g. a person's approval)",
    dependencies=JsonBody,
    responses={404: _PROBLEM, 409: _PROBLEM, 415: _PROBLEM, 422: _PROBLEM, 503: _PROBLEM},
)
async def deliver_event(saga_id: SagaId, body: EventRequest, context: Context) -> SagaOut:
    transition = await context.service.deliver_event(
        saga_id, body.event, body.body, body.message_id
    )
    return await _accepted(context, transition)
