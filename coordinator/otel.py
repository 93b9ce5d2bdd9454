"""Optional OpenTelemetry spans: one per persisted transition, in the saga's own trace.

Off by default. With ``SAGA_OTEL_ENABLED=true`` and the ``otel`` extra installed
(``pip install 'saga-coordinator[otel]'``), the coordinator exports a span for every
transition it persists, as a child of the saga's ``traceparent`` — the one the trigger
event or REST call carried, which every command and reply carries too — so a tracing
backend shows a saga's transitions beside the spans of the services that took part.
The exporter is OTLP over HTTP, configured by the standard ``OTEL_EXPORTER_OTLP_*``
variables.

Like the metrics, the spans are derived after the fact from the instance before and after
a transition (its new history entries); the engine knows nothing of them, and a failure
here never fails a transition.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from coordinator.engine.state import SagaState
from coordinator.metrics import new_history

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

__all__ = ["OtelUnavailable", "TransitionObserver", "TransitionSpans", "build_spans"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'saga-coordinator[otel]'"


class TransitionObserver(Protocol):
    """What the service tells after every persisted transition."""

    def record_transition(self, before: SagaState | None, after: SagaState) -> None: ...


class OtelUnavailable(RuntimeError):
    """Spans were asked for, but OpenTelemetry is not installed."""

    def __init__(self) -> None:
        super().__init__(
            f"SAGA_OTEL_ENABLED is set but OpenTelemetry is not installed: {INSTALL_HINT}"
        )


def _nanos(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000_000)


class TransitionSpans:
    """Makes one span per persisted transition, parented on the saga's ``traceparent``."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        self._propagator = TraceContextTextMapPropagator()

    def record_transition(self, before: SagaState | None, after: SagaState) -> None:
        """Export the transition's span; never raises."""
        try:
            self._record(before, after)
        except Exception:
            log.exception("could not record a span for saga %s", after.id)

    def _record(self, before: SagaState | None, after: SagaState) -> None:
        entries = new_history(before, after)
        if not entries:
            return
        carrier = {"traceparent": after.traceparent} if after.traceparent else {}
        parent = self._propagator.extract(carrier)
        first = entries[0]
        span = self._tracer.start_span(
            f"{after.definition} {first.event}",
            context=parent,
            start_time=_nanos(first.at),
            attributes={
                "saga.id": after.id,
                "saga.definition": after.definition,
                "saga.version": after.definition_version,
                "saga.key": after.key or "",
                "saga.status": after.status,
                "saga.revision": after.revision,
                "saga.events": [entry.event for entry in entries],
                "saga.steps": sorted({entry.step for entry in entries if entry.step}),
            },
        )
        for entry in entries:
            attributes: dict[str, str | int] = {}
            if entry.step:
                attributes["step"] = entry.step
            if entry.kind:
                attributes["kind"] = entry.kind
            if entry.attempt is not None:
                attributes["attempt"] = entry.attempt
            span.add_event(entry.event, attributes=attributes, timestamp=_nanos(entry.at))
        span.end(end_time=_nanos(entries[-1].at))


def build_spans(enabled: bool, *, exporter: SpanExporter | None = None) -> TransitionSpans | None:
    """The span maker when ``enabled``; ``exporter`` replaces OTLP (tests).

    Raises:
        OtelUnavailable: ``enabled`` but the ``otel`` extra is not installed.
    """
    if not enabled:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise OtelUnavailable() from exc
    provider = TracerProvider(resource=Resource.create({"service.name": "saga-coordinator"}))
    if exporter is None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise OtelUnavailable() from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return TransitionSpans(provider.get_tracer("saga-coordinator"))
