"""The ``/v1`` REST API (SPEC §5), and the one call that installs it on an app.

``install_rest_api`` goes into ``create_app``'s ``install`` hook; the composition root
writes::

    client = make_client(settings.mongodb_url)  # shared by the store and the queries
    store = MongoSagaStore(client, settings.mongodb_database, owns_client=True)
    queries = SagaQueries(client, settings.mongodb_database)
    await queries.ensure_indexes()
    context = ApiContext(
        store=store,
        service=service,  # SagaService: register_definition also binds trigger events
        queries=queries,
        tokens=parse_api_tokens(settings.api_tokens),
    )
    refuse_anonymous_bind(
        settings.http_host, context.tokens, allow_anonymous=settings.api_allow_anonymous
    )
    app = create_app(
        store=store,
        broker_open=lambda: broker.is_open,
        install=[partial(install_rest_api, context=context, max_body_bytes=...)],
    )

It stores the context on ``app.state``, answers every error of the app as problem details,
limits request bodies and mounts the routers under ``/v1``, all behind the token check; it
also serves Swagger UI at ``/docs`` when the app does not already.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from coordinator.api import definitions, sagas
from coordinator.api.auth import bearer_scheme
from coordinator.api.context import STATE_KEY, ApiContext
from coordinator.api.limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimitMiddleware
from coordinator.api.problems import PROBLEM_JSON, install_problem_handlers
from schemas.api import Problem

__all__ = ["install_rest_api", "router"]


def _problem(description: str) -> dict[str, Any]:
    return {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": description}


_AUTH_PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: _problem("The body is not JSON"),
    401: _problem("No or bad token (only when API tokens are configured)"),
    403: _problem("Read-only token (only when API tokens are configured)"),
    413: _problem("The body is over the size limit"),
    422: _problem("Invalid request"),
    500: _problem("Unexpected error"),
    503: _problem("MongoDB or RabbitMQ did not answer; retry later"),
}
_TOKEN_STATUSES = ("401", "403")

router = APIRouter(prefix="/v1", dependencies=[bearer_scheme], responses=_AUTH_PROBLEMS)
router.include_router(definitions.router)
router.include_router(sagas.router)


def install_rest_api(
    app: FastAPI, context: ApiContext, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> None:
    """Mount ``/v1`` on ``app`` with its problem handlers, size limit and context."""
    setattr(app.state, STATE_KEY, context)
    if context.tokens.open:
        _document_open_api(app)
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=max_body_bytes)
    app.include_router(router)
    if app.docs_url is None and app.openapi_url is not None:
        _add_docs(app, app.openapi_url)


def _document_open_api(app: FastAPI) -> None:
    """Without tokens, the OpenAPI asks for none: no security, no 401 or 403 answers."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        for path, item in schema.get("paths", {}).items():
            if not path.startswith("/v1"):
                continue
            for operation in item.values():
                if isinstance(operation, dict):
                    operation.pop("security", None)
                    for status in _TOKEN_STATUSES:
                        operation.get("responses", {}).pop(status, None)
        schema.get("components", {}).pop("securitySchemes", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_docs(app: FastAPI, openapi_url: str) -> None:
    """Serve Swagger UI at ``/docs`` over the app's OpenAPI document."""

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} - API")
