"""The coordinator's HTTP application.

``create_app`` builds the FastAPI app with the health endpoints; further routers (the
``/v1`` REST API, metrics) are installed by the callables passed as ``install``, each
called with the app, so the composition root decides what is served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fastapi import FastAPI

from coordinator.api.head import HeadAsGetMiddleware
from coordinator.api.health import HEALTH_STATE_KEY, HealthChecks
from coordinator.api.health import router as health_router
from coordinator.ports import SagaStore

__all__ = ["create_app"]


def create_app(
    *,
    store: SagaStore,
    broker_open: Callable[[], bool],
    install: Iterable[Callable[[FastAPI], None]] = (),
    title: str = "Saga coordinator",
) -> FastAPI:
    """The HTTP app: ``/healthz``, ``/readyz``, plus whatever ``install`` adds; ``HEAD``
    answers like ``GET`` without the body, everywhere.

    Args:
        store: pinged by ``/readyz``.
        broker_open: tells ``/readyz`` whether the RabbitMQ connection is open.
        install: callables that add routers, handlers or state to the app.
        title: the OpenAPI title.
    """
    app = FastAPI(title=title, docs_url=None, redoc_url=None)
    setattr(app.state, HEALTH_STATE_KEY, HealthChecks(store=store, broker_open=broker_open))
    app.include_router(health_router)
    for step in install:
        step(app)
    app.add_middleware(HeadAsGetMiddleware)  # outermost: HEAD is GET for everything inside
    return app
