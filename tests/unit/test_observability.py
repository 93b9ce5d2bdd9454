"""Metrics, trace context and JSON logs, without servers.

``transition_facts`` is fed the states of a saga driven through the real engine (the
engine tests' ``Conversation``); ``SagaMetrics`` is read back from its own registry.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from coordinator.adapters.memory import InMemorySagaStore
from coordinator.adapters.rabbit import RawMessage, Undecodable, decode_event, decode_reply
from coordinator.api.metrics import install_metrics
from coordinator.engine.engine import Options
from coordinator.engine.messages import ReplyReceived
from coordinator.engine.state import Command, HistoryEntry, SagaState
from coordinator.errors import BrokerUnavailable, StoreUnavailable
from coordinator.logging import JsonFormatter, saga_extra
from coordinator.metrics import (
    DEAD_LETTER_CATEGORIES,
    SERVICE_COUNTERS,
    SagaMetrics,
    StepEnded,
    TransitionFacts,
    new_history,
    transition_facts,
)
from coordinator.service import SagaService, ServiceStats
from coordinator.tracing import new_traceparent, valid_traceparent
from schemas.envelope import FailedReply, Reply, ReplyError, SucceededReply
from tests.unit.engine.conversation import T0, Conversation, definition, linear

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


# -- transition_facts -------------------------------------------------------------------


def facts_of(talk: Conversation, action: Any) -> TransitionFacts:
    before = talk.state
    action()
    return transition_facts(before, talk.state)


def test_a_start_is_counted_and_nothing_has_ended() -> None:
    talk = Conversation(definition())
    talk.start()
    facts = transition_facts(None, talk.state)
    assert facts == TransitionFacts(definition="order-fulfillment", started=True)


def test_a_step_that_succeeds_reports_its_duration_from_the_first_attempt() -> None:
    talk = Conversation(definition())
    talk.start()
    talk.advance(1.5)
    facts = facts_of(talk, lambda: talk.succeed("reserve-stock", {"reservation_id": "r"}))
    assert not facts.started and facts.ended is None
    assert facts.steps_ended == (StepEnded("reserve-stock", "action", 1.5),)


def test_retries_and_timeouts_are_read_from_the_new_history_entries() -> None:
    talk = Conversation(definition())
    talk.start()
    talk.advance(2)
    failed = facts_of(talk, lambda: talk.fail("reserve-stock", retryable=True))
    assert failed.retries == (("reserve-stock", "action"),) and failed.timeouts == ()
    assert failed.steps_ended == ()  # the step is not over: it retries
    talk.fire()  # attempt 2 sent after the backoff
    timed_out = facts_of(talk, talk.fire)  # attempt 2 times out; attempt 3 is scheduled
    assert timed_out.timeouts == (("reserve-stock", "action"),)
    assert timed_out.retries == (("reserve-stock", "action"),)


def test_completion_reports_the_saga_duration() -> None:
    talk = Conversation(linear("a", "b"))
    talk.start()
    talk.advance(1)
    talk.succeed("a")
    talk.advance(2)
    facts = facts_of(talk, lambda: talk.succeed("b"))
    assert facts.ended == "completed" and facts.saga_seconds == 3
    assert facts.steps_ended == (StepEnded("b", "action", 2),)


def test_compensation_reports_the_failed_step_the_compensation_and_the_outcome() -> None:
    talk = Conversation(definition())
    talk.start()
    talk.succeed("reserve-stock", {"reservation_id": "r"})
    talk.advance(1)
    failing = facts_of(talk, lambda: talk.fail("notify"))
    assert failing.ended is None  # compensating: not over yet
    assert failing.steps_ended == (StepEnded("notify", "action", 1),)
    talk.advance(4)
    done = facts_of(talk, lambda: talk.succeed("reserve-stock", kind="compensation"))
    assert done.ended == "compensated" and done.saga_seconds == 5
    assert done.steps_ended == (StepEnded("reserve-stock", "compensation", 4),)


def test_an_unchanged_status_is_not_counted_again() -> None:
    talk = Conversation(linear("a"))
    talk.start()
    talk.succeed("a")
    assert talk.status == "completed"
    facts = facts_of(talk, lambda: talk.succeed("a"))  # a late duplicate: reply.ignored
    assert facts.ended is None and facts.steps_ended == ()


def test_new_history_accounts_for_trimmed_entries() -> None:
    talk = Conversation(linear("a"))
    talk.start()
    before = talk.state
    entries = [HistoryEntry(at=T0, event=f"e{n}") for n in range(5)]
    after = before.model_copy(update={"history": entries[2:], "history_dropped": 2})
    shorter = before.model_copy(update={"history": entries[:3], "history_dropped": 0})
    assert new_history(shorter, after) == entries[3:]
    assert new_history(after, after) == []
    assert new_history(None, shorter) == entries[:3]


# -- SagaMetrics --------------------------------------------------------------------------


def sample(metrics: SagaMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_transitions_move_the_counters_and_histograms() -> None:
    metrics = SagaMetrics(round_trips=lambda: {"find": 3, "update": 2})
    talk = Conversation(linear("a", "b"))
    talk.start()
    metrics.record_transition(None, talk.state)
    for step in ("a", "b"):
        before = talk.state
        talk.advance(1)
        talk.succeed(step)
        metrics.record_transition(before, talk.state)
    name = {"definition": "linear"}
    assert sample(metrics, "saga_sagas_started_total", **name) == 1
    assert sample(metrics, "saga_sagas_completed_total", **name) == 1
    assert sample(metrics, "saga_sagas_compensated_total", **name) is None
    assert sample(metrics, "saga_transitions_total") == 3
    assert sample(metrics, "saga_duration_seconds_count", status="completed", **name) == 1
    assert sample(metrics, "saga_duration_seconds_sum", status="completed", **name) == 2
    assert sample(metrics, "saga_step_duration_seconds_count", step="b", kind="action", **name)
    assert sample(metrics, "saga_db_round_trips_total", command="find") == 3


def test_dead_letters_have_a_fixed_set_of_categories() -> None:
    metrics = SagaMetrics()
    metrics.dead_lettered("replies", "not_json")
    metrics.dead_lettered("events", "a free-text reason")
    assert sample(metrics, "saga_dead_letters_total", queue="replies", category="not_json") == 1
    assert sample(metrics, "saga_dead_letters_total", queue="events", category="other") == 1
    assert sample(metrics, "saga_dead_letters_total", queue="events", category="too_large") == 0
    text = metrics.render().decode()
    assert "free-text" not in text


REPLY_HEADERS = {
    "x-saga-id": "s-1",
    "x-saga-step": "reserve",
    "x-saga-kind": "action",
    "x-saga-attempt": 1,
}


@pytest.mark.parametrize(
    ("body", "headers", "category"),
    [
        (b"x" * 2000, REPLY_HEADERS, "too_large"),
        (b"\xff", REPLY_HEADERS, "not_json"),
        (b"[1]", REPLY_HEADERS, "not_object"),
        (b'{"status": "succeeded"}', {}, "missing_header"),
        (b'{"status": "succeeded"}', {**REPLY_HEADERS, "x-saga-kind": "redo"}, "bad_header"),
        (b'{"status": "succeeded"}', {**REPLY_HEADERS, "x-saga-attempt": 0}, "bad_header"),
        (b'{"status": "done"}', REPLY_HEADERS, "unknown_status"),
        (b'{"status": "failed", "error": {}}', REPLY_HEADERS, "bad_body"),
    ],
)
def test_the_codec_names_a_fixed_category(
    body: bytes, headers: dict[str, Any], category: str
) -> None:
    with pytest.raises(Undecodable) as rejected:
        decode_reply(RawMessage(body, "coordinator", headers), max_bytes=1024)
    assert rejected.value.category == category
    assert category in DEAD_LETTER_CATEGORIES


def test_an_event_without_a_routing_key_is_categorized() -> None:
    with pytest.raises(Undecodable) as rejected:
        decode_event(RawMessage(b"{}", "", {}), max_bytes=1024)
    assert rejected.value.category == "missing_routing_key"


def test_every_app_has_its_own_registry() -> None:
    first, second = SagaMetrics(), SagaMetrics()
    first.confirmed(0.002)
    assert sample(first, "saga_publish_confirm_seconds_count") == 1
    assert sample(second, "saga_publish_confirm_seconds_count") == 0


def test_in_flight_is_replaced_at_every_count() -> None:
    metrics = SagaMetrics()
    metrics.set_in_flight({("a", "running"): 2, ("b", "failed"): 1})
    metrics.set_in_flight({("a", "running"): 1})
    assert sample(metrics, "saga_sagas_in_flight", definition="a", status="running") == 1
    assert sample(metrics, "saga_sagas_in_flight", definition="b", status="failed") is None


async def test_the_endpoint_counts_in_flight_and_survives_a_database_outage() -> None:
    metrics = SagaMetrics()
    answers: list[Any] = [{("a", "running"): 4}, StoreUnavailable("down")]

    async def in_flight() -> dict[tuple[str, str], int]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    app = FastAPI()
    install_metrics(app, metrics=metrics, in_flight=in_flight)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        for _ in range(2):
            response = await http.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            assert 'saga_sagas_in_flight{definition="a",status="running"} 4.0' in response.text


# -- trace context ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),
        (" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 ", True),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more", True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more", False),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", False),
        ("00-x", False),
        ("", False),
        (None, False),
    ],
)
def test_traceparent_validation(value: str | None, valid: bool) -> None:
    assert (valid_traceparent(value) is not None) is valid


def test_fresh_traceparents_are_valid_and_distinct() -> None:
    made = {new_traceparent() for _ in range(100)}
    assert len(made) == 100
    assert all(TRACEPARENT.match(t) and valid_traceparent(t) == t for t in made)


class Publisher:
    def __init__(self) -> None:
        self.published: list[Command] = []

    async def publish_commands(self, commands: Sequence[Command]) -> None:
        self.published.extend(commands)


async def test_the_service_keeps_a_valid_traceparent_and_replaces_a_missing_or_bad_one() -> None:
    store, publisher = InMemorySagaStore(), Publisher()
    await store.register_definition(linear("a"), "source")
    ids = (f"s-{n}" for n in itertools.count(1))
    metrics = SagaMetrics()
    service = SagaService(
        store,
        publisher,
        options=Options(),
        clock=lambda: T0,
        random=lambda: 0.5,
        new_id=lambda: next(ids),
        metrics=metrics,
    )
    given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    states: list[SagaState] = []
    for traceparent in (given, None, "00-bogus"):
        state, _ = await service.start_saga("linear", {}, traceparent=traceparent)
        states.append(state)
    assert states[0].traceparent == given
    for state in states[1:]:
        assert state.traceparent is not None and TRACEPARENT.match(state.traceparent)
    assert [c.headers["traceparent"] for c in publisher.published] == [
        s.traceparent for s in states
    ]
    assert sample(metrics, "saga_sagas_started_total", definition="linear") == 3


# -- the service's own counters -------------------------------------------------------------


class FlakyPublisher(Publisher):
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def publish_commands(self, commands: Sequence[Command]) -> None:
        if self.down:
            raise BrokerUnavailable("RabbitMQ: publish failed")
        await super().publish_commands(commands)


def reply(step: str, attempt: int, body: Reply) -> ReplyReceived:
    return ReplyReceived(step=step, kind="action", attempt=attempt, reply=body, at=T0)


SERVICE_SERIES = {
    "conflicts": "saga_save_conflicts_total",
    "published": "saga_commands_published_total",
    "relayed": "saga_commands_relayed_total",
    "timers_fired": "saga_timers_fired_total",
    "outbox_cleared": "saga_outbox_entries_cleared_total",
    "outbox_flushes": "saga_outbox_clear_batches_total",
    "events_matched": "saga_events_matched_total",
    "events_buffered": "saga_events_buffered_total",
    "events_expired": "saga_events_expired_total",
}


def service_samples(metrics: SagaMetrics) -> dict[str, float | None]:
    return {name: sample(metrics, name) for name in SERVICE_SERIES.values()}


async def test_the_service_counters_are_exported_at_scrape_time() -> None:
    """Two replicas on one store: ``first`` is scraped; ``second`` moves the saga under it."""
    store, publisher = InMemorySagaStore(), FlakyPublisher()
    await store.register_definition(
        linear("a", "b", timeout="30s", retry={"max_attempts": 2, "backoff": "1s"}), "source"
    )
    now = [T0]

    def clock() -> datetime:
        return now[0]

    def replica(metrics: SagaMetrics | None = None) -> SagaService:
        return SagaService(
            store,
            publisher,
            options=Options(),
            clock=clock,
            random=lambda: 0.5,
            new_id=lambda: "s-1",
            relay_age=timedelta(seconds=5),
            metrics=metrics,
        )

    metrics = SagaMetrics()
    first, second = replica(metrics), replica()
    metrics.track_service(lambda: first.stats)
    assert set(SERVICE_SERIES) == {attribute for attribute, _, _ in SERVICE_COUNTERS}
    assert set(service_samples(metrics).values()) == {0}  # exported before anything happens

    publisher.down = True  # saved, not published: left in the outbox
    saga, _ = await first.start_saga("linear", {})
    publisher.down = False
    now[0] += timedelta(seconds=6)
    assert await first.relay_unpublished() == 1  # do_a, attempt 1
    assert await first.flush_outbox() == 1
    await second.on_reply(saga.id, reply("a", 1, SucceededReply(status="succeeded")))
    # ``first`` still caches revision 1: its save loses to ``second``'s, then is recomputed.
    busy = FailedReply(
        status="failed", error=ReplyError(code="busy", message="busy", retryable=True)
    )
    await first.on_reply(saga.id, reply("b", 1, busy))
    now[0] += timedelta(seconds=1)
    assert await first.fire_due_timers() == 1  # the backoff: do_b, attempt 2
    await first.on_reply(saga.id, reply("b", 2, SucceededReply(status="succeeded")))
    assert store.sagas[saga.id].status == "completed"

    assert service_samples(metrics) == {
        "saga_save_conflicts_total": 1,
        "saga_commands_published_total": 2,  # the relayed do_a and do_b attempt 2
        "saga_commands_relayed_total": 1,
        "saga_timers_fired_total": 1,
        "saga_outbox_entries_cleared_total": 1,  # the completion's save dropped do_b's entry
        "saga_outbox_clear_batches_total": 1,
        "saga_events_matched_total": 0,  # no await step: the events' counters stay at zero
        "saga_events_buffered_total": 0,
        "saga_events_expired_total": 0,
    }
    assert {
        name: getattr(first.stats, attribute) for attribute, name in SERVICE_SERIES.items()
    } == service_samples(metrics)
    # start, retry scheduled, attempt 2 sent, completed: counted once, by record_transition
    assert sample(metrics, "saga_transitions_total") == first.stats.transitions == 4
    assert [c.routing_key for c in publisher.published] == ["p.do_a", "p.do_b", "p.do_b"]
    text = metrics.render().decode()
    assert "# HELP saga_save_conflicts_total Conditional saves that lost a race" in text
    assert "# TYPE saga_commands_relayed_total counter" in text
    assert text.count("# TYPE saga_transitions_total counter") == 1


def test_one_service_per_registry() -> None:
    metrics, stats = SagaMetrics(), ServiceStats(relayed=3)
    metrics.track_service(lambda: stats)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        metrics.track_service(lambda: stats)
    stats.relayed += 1  # read at scrape time, not at registration
    assert sample(metrics, "saga_commands_relayed_total") == 4
    assert sample(SagaMetrics(), "saga_commands_relayed_total") is None  # not tracked


# -- JSON logs ----------------------------------------------------------------------------


def test_json_log_lines_carry_the_saga_fields() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.json-lines")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("about a step", extra=saga_extra("s-1", "reserve", attempt=2))
        logger.warning("about a saga", extra=saga_extra("s-2"))
        logger.warning("about nothing in particular\nover two lines")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    assert lines[0]["saga_id"] == "s-1" and lines[0]["step"] == "reserve"
    assert lines[0]["attempt"] == 2 and lines[0]["level"] == "WARNING"
    assert lines[1]["saga_id"] == "s-2" and "step" not in lines[1]
    assert "saga_id" not in lines[2] and lines[2]["message"].endswith("two lines")
