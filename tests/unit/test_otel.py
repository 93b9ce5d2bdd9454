"""Spans per transition: parented on the saga's traceparent, one per persisted change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from coordinator.engine import Options, ReplyReceived, SagaStarted, handle, start
from coordinator.otel import build_spans
from schemas.definition import SagaDefinition
from schemas.envelope import SucceededReply

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
T0 = datetime(2026, 1, 1, tzinfo=UTC)

DEFINITION = SagaDefinition.model_validate(
    {
        "name": "traced",
        "version": 1,
        "steps": [
            {"name": "reserve", "participant": "a", "command": "reserve"},
            {"name": "charge", "participant": "b", "command": "charge"},
        ],
    }
)


def test_disabled_makes_no_span_maker() -> None:
    assert build_spans(False) is None


def test_each_transition_is_a_span_in_the_saga_trace() -> None:
    exporter = InMemorySpanExporter()
    spans = build_spans(True, exporter=exporter)
    assert spans is not None
    started = start(
        DEFINITION,
        SagaStarted(saga_id="s-1", key="k-1", input={}, at=T0, traceparent=TRACEPARENT),
        options=Options(),
        random=lambda: 0.5,
    ).state
    spans.record_transition(None, started)
    reply = ReplyReceived(
        step="reserve",
        kind="action",
        attempt=1,
        reply=SucceededReply(status="succeeded", output={}),
        at=T0 + timedelta(milliseconds=40),
    )
    advanced = handle(DEFINITION, started, reply, options=Options(), random=lambda: 0.5).state
    spans.record_transition(started, advanced)

    first, second = exporter.get_finished_spans()
    for span in (first, second):
        assert span.context is not None and span.parent is not None
        assert format(span.context.trace_id, "032x") == TRACE_ID
        assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
        assert span.attributes is not None and span.attributes["saga.id"] == "s-1"
    assert first.name == "traced saga.started"
    assert [event.name for event in first.events] == ["saga.started", "action.sent"]
    assert second.name == "traced action.succeeded"
    assert [event.name for event in second.events] == ["action.succeeded", "action.sent"]
    assert second.attributes is not None and second.attributes["saga.revision"] == 2
    assert second.start_time == int((T0 + timedelta(milliseconds=40)).timestamp() * 1e9)


def test_a_transition_without_new_history_makes_no_span() -> None:
    exporter = InMemorySpanExporter()
    spans = build_spans(True, exporter=exporter)
    assert spans is not None
    state = start(
        DEFINITION,
        SagaStarted(saga_id="s-2", key=None, input={}, at=T0),
        options=Options(),
        random=lambda: 0.5,
    ).state
    spans.record_transition(state, state)
    assert exporter.get_finished_spans() == ()


def test_enabled_exports_over_otlp_by_default() -> None:
    spans = build_spans(True)
    assert spans is not None
