"""Liveness and readiness: ``GET /healthz`` and ``GET /readyz``.

``/healthz`` answers 200 while the process serves HTTP. ``/readyz`` answers 200 when MongoDB
answers a ping within ``ping_timeout`` seconds and the RabbitMQ connection is open, else 503
with a problem document (RFC 9457) naming what is not ready. The ping is bounded here, not by
the driver's server selection timeout (30 s by default), so a probe answers within about
``ping_timeout`` even while MongoDB is down; the broker check reads the connection's state
and costs nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from coordinator.errors import AdapterError
from coordinator.ports import SagaStore

__all__ = ["HEALTH_STATE_KEY", "HealthChecks", "router"]

HEALTH_STATE_KEY = "saga_health"
PROBLEM_JSON = "application/problem+json"

router = APIRouter(tags=["health"])


@dataclass(frozen=True, slots=True)
class HealthChecks:
    """What readiness looks at: the store's ping and the broker connection."""

    store: SagaStore
    broker_open: Callable[[], bool]
    ping_timeout: float = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> JSONResponse | dict[str, object]:
    checks: HealthChecks = getattr(request.app.state, HEALTH_STATE_KEY)
    failures: dict[str, str] = {}
    try:
        await asyncio.wait_for(checks.store.ping(), checks.ping_timeout)
    except (AdapterError, TimeoutError) as exc:
        failures["mongodb"] = str(exc) or f"no answer to ping within {checks.ping_timeout:g} s"
    if not checks.broker_open():
        failures["rabbitmq"] = "the connection is not open"
    if not failures:
        return {"status": "ready", "checks": {"mongodb": "ok", "rabbitmq": "ok"}}
    return JSONResponse(
        status_code=503,
        media_type=PROBLEM_JSON,
        content={
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "; ".join(f"{name}: {why}" for name, why in failures.items()),
            "checks": {name: failures.get(name, "ok") for name in ("mongodb", "rabbitmq")},
        },
    )
