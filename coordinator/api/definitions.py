"""``/v1/definitions``: list, read, register and retire saga definitions.

Registration takes the YAML (``application/yaml``, ``text/yaml``, ``application/x-yaml``) or
JSON (``application/json``) text as the request body, validates it with the same loader as
``saga-coordinator validate``, stores it through the service, which binds the trigger
event (then calls the optional ``on_definition_registered`` hook). A document with errors
is refused with 422 and every located error in the problem's ``errors``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response

from coordinator.api.auth import AuthorizedRoute
from coordinator.api.context import ApiContext, get_context
from coordinator.api.jsonbody import json_problems
from coordinator.api.problems import PROBLEM_JSON, ApiProblem, definition_error_items
from coordinator.definitions.loader import load_definition
from coordinator.errors import AdapterError, DefinitionError
from coordinator.ports import StoredDefinition
from schemas.api import DefinitionList, DefinitionOut, Problem
from schemas.definition import NAME_PATTERN

__all__ = ["YAML_TYPES", "router"]

YAML_TYPES = frozenset({"application/yaml", "text/yaml", "application/x-yaml"})
JSON_TYPES = frozenset({"application/json"})
REQUEST_SOURCE = "<request body>"

router = APIRouter(prefix="/definitions", route_class=AuthorizedRoute, tags=["definitions"])

Context = Annotated[ApiContext, Depends(get_context)]
Name = Annotated[str, Path(pattern=NAME_PATTERN, description="The definition's name.")]

_PROBLEM: dict[str, Any] = {"model": Problem, "content": {PROBLEM_JSON: {}}}


def definition_out(stored: StoredDefinition) -> DefinitionOut:
    definition = stored.definition
    return DefinitionOut(
        name=definition.name,
        version=definition.version,
        description=definition.description,
        trigger_event=definition.trigger.event if definition.trigger else None,
        registered_at=stored.registered_at,
        content_hash=stored.content_hash,
        definition=definition,
        source=stored.source,
        retired=stored.retired,
    )


@router.get("", response_model=DefinitionList, summary="The latest version of each definition")
async def list_definitions(context: Context) -> DefinitionList:
    stored = await context.store.latest_definitions()
    return DefinitionList(items=[definition_out(item) for item in stored])


@router.get(
    "/{name}",
    response_model=DefinitionOut,
    summary="The latest version of one definition",
    responses={404: _PROBLEM},
)
async def get_definition(name: Name, context: Context) -> DefinitionOut:
    stored = await context.store.get_definition(name)
    if stored is None:
        raise ApiProblem(404, f"no definition {name!r} is registered", slug="unknown-definition")
    return definition_out(stored)


@router.get(
    "/{name}/versions",
    response_model=DefinitionList,
    summary="Every version of one definition, oldest first",
    responses={404: _PROBLEM},
)
async def list_versions(name: Name, context: Context) -> DefinitionList:
    stored = await context.store.definition_versions(name)
    if not stored:
        raise ApiProblem(404, f"no definition {name!r} is registered", slug="unknown-definition")
    stored = sorted(stored, key=lambda item: item.definition.version)
    return DefinitionList(items=[definition_out(item) for item in stored])


@router.get(
    "/{name}/versions/{version}",
    response_model=DefinitionOut,
    summary="One version of one definition",
    responses={404: _PROBLEM},
)
async def get_version(
    name: Name, version: Annotated[int, Path(ge=1, le=2**63 - 1)], context: Context
) -> DefinitionOut:
    stored = await context.store.get_definition(name, version)
    if stored is None:
        raise ApiProblem(
            404,
            f"no definition {name!r} version {version} is registered",
            slug="unknown-definition",
        )
    return definition_out(stored)


_REGISTER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The definition, as YAML or JSON text (SPEC §2).",
        "content": {
            **{media: {"schema": {"type": "string"}} for media in sorted(YAML_TYPES)},
            "application/json": {"schema": {"$ref": "#/components/schemas/SagaDefinition"}},
        },
    }
}


def _check_json(body: bytes) -> None:
    """Refuse a body that is not JSON (YAML would accept some of it, e.g. ``{"a": }``)."""
    try:
        json.loads(body)
    except UnicodeDecodeError as exc:
        raise _invalid([{"line": 1, "field": None, "message": f"not UTF-8 text: {exc}"}]) from exc
    except json.JSONDecodeError as exc:
        message = f"invalid JSON: {exc.msg} (column {exc.colno})"
        raise _invalid([{"line": exc.lineno, "field": None, "message": message}]) from exc


def _invalid(errors: list[dict[str, Any]]) -> ApiProblem:
    return ApiProblem(
        422,
        f"the definition has {len(errors)} error(s): see errors",
        slug="invalid-definition",
        errors=errors,
    )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@router.post(
    "",
    response_model=DefinitionOut,
    status_code=201,
    summary="Register a definition (YAML or JSON)",
    openapi_extra=_REGISTER_BODY,
    responses={
        200: {"model": DefinitionOut, "description": "Already registered, identical"},
        201: {"description": "Registered"},
        409: _PROBLEM,
        413: _PROBLEM,
        415: _PROBLEM,
        422: _PROBLEM,
        503: _PROBLEM,
    },
)
async def register_definition(
    request: Request, response: Response, context: Context
) -> DefinitionOut:
    media = _media_type(request)
    if media not in YAML_TYPES | JSON_TYPES:
        accepted = ", ".join(sorted(YAML_TYPES | JSON_TYPES))
        raise ApiProblem(
            415,
            f"a definition is sent as {accepted}, not {media or 'a body without Content-Type'}",
            slug="unsupported-media-type",
            headers={"Accept-Post": accepted},
        )
    body = await request.body()
    if media in JSON_TYPES:
        _check_json(body)
    try:
        # JSON is YAML: once the body is known to be JSON, one loader serves both, with
        # line numbers for either.
        definition = load_definition(body, REQUEST_SOURCE)
    except DefinitionError as exc:
        raise _invalid(definition_error_items(exc)) from exc
    except (ArithmeticError, ValueError, TypeError, RecursionError) as exc:
        # A value the loader's rules did not foresee (say, a duration too long to
        # represent): still the request's fault, never a 500.
        message = f"a value is out of range or malformed: {exc}"
        raise _invalid([{"line": None, "field": None, "message": message}]) from exc
    # YAML escapes can make text JSON would not (a lone surrogate): refused, located.
    if problems := json_problems(definition.model_dump()):
        raise _invalid([{"line": None, **problem} for problem in problems])
    source = body.decode("utf-8-sig")
    try:
        outcome = await context.service.register_definition(definition, source)
        if context.on_definition_registered is not None:
            await context.on_definition_registered(definition)
    except AdapterError as exc:
        if await context.store.get_definition(definition.name, definition.version) is None:
            raise
        raise ApiProblem(
            503,
            f"the definition is stored but its trigger could not be bound ({exc}); "
            "send the same request again",
            slug="unavailable",
            headers={"Retry-After": "1"},
        ) from exc
    stored = await context.store.get_definition(definition.name, definition.version)
    if stored is None:  # pragma: no cover - the store just wrote it
        raise RuntimeError(f"definition {definition.name}@{definition.version} vanished")
    location = f"/v1/definitions/{definition.name}/versions/{definition.version}"
    response.headers["Location"] = location
    response.status_code = 201 if outcome == "created" else 200
    return definition_out(stored)


@router.post(
    "/{name}/retire",
    response_model=DefinitionOut,
    summary="Retire a definition: its trigger no longer starts sagas",
    description="Every version of the name is retired and its trigger binding removed; "
    "running sagas go on; registering a new version makes the name active again.",
    responses={404: _PROBLEM, 503: _PROBLEM},
)
async def retire_definition(name: Name, context: Context) -> DefinitionOut:
    await context.service.retire_definition(name)
    stored = await context.store.get_definition(name)
    if stored is None:  # pragma: no cover - definitions are never deleted
        raise ApiProblem(404, f"no definition {name!r} is registered", slug="unknown-definition")
    return definition_out(stored)
