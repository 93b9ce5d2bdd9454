"""``GET /metrics``: the Prometheus text exposition, outside ``/v1`` and without a token.

``install_metrics`` goes into ``create_app``'s ``install`` hook. At every scrape it first
counts the sagas in flight (one aggregation, bounded by ``in_flight_timeout``; when the
database does not answer, the gauge keeps its previous values and the scrape still
succeeds), then renders the app's own registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from fastapi import FastAPI, Response

from coordinator.errors import AdapterError
from coordinator.metrics import CONTENT_TYPE, SagaMetrics

__all__ = ["InFlight", "install_metrics"]

log = logging.getLogger(__name__)

InFlight = Callable[[], Awaitable[Mapping[tuple[str, str], int]]]
"""``{(definition, status): count}`` of the unfinished sagas (``SagaQueries.in_flight``)."""


def install_metrics(
    app: FastAPI,
    *,
    metrics: SagaMetrics,
    in_flight: InFlight | None = None,
    in_flight_timeout: float = 2.0,
) -> None:
    """Serve ``metrics`` at ``GET /metrics``."""

    @app.get("/metrics", include_in_schema=False)
    async def scrape() -> Response:
        if in_flight is not None:
            try:
                counts = await asyncio.wait_for(in_flight(), in_flight_timeout)
            except (AdapterError, TimeoutError) as exc:
                log.warning("metrics: sagas in flight not counted: %s", exc)
            else:
                metrics.set_in_flight(counts)
        return Response(metrics.render(), media_type=CONTENT_TYPE)
