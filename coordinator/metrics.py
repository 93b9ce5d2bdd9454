"""Prometheus metrics: what the coordinator counts, and how a transition is turned into facts.

Theory of operation
-------------------
The engine stays pure and knows nothing of metrics. After every persisted transition the
service makes one call, ``SagaMetrics.record_transition(before, after)``, with the instance
before and after the change (``before`` is None for a start). ``transition_facts`` — pure,
no clock, no I/O — compares the two:

- the saga's status: a start, or a change to ``completed`` / ``compensated`` / ``failed``
  (whose duration is ``updated_at - created_at`` of the new state);
- each step phase (action, compensation) whose ``finished_at`` was set by this transition:
  its duration is ``finished_at - started_at``, i.e. from its first attempt to its outcome,
  retries and backoffs included;
- the history entries this transition appended: ``<kind>.retry_scheduled`` is a retry,
  ``<kind>.timed_out`` an attempt timeout.

Everything else is observed where it happens: the RabbitMQ adapter reports dead-lettered
messages (by a fixed category, never the free-text reason) and publish-confirm latencies
(``BrokerObserver``); MongoDB round trips are read at scrape time from the client's
``RoundTripCounter`` through a custom collector; the sagas in flight are counted by one
aggregation at scrape time (``set_in_flight``). The service's own cheap counters
(``SagaService.stats``: save conflicts, commands published and relayed, timers fired,
outbox clears) are read at scrape time too, by ``ServiceStatsCollector``
(``SagaMetrics.track_service``): the service keeps counting as it always did and knows
nothing of it.

Each ``SagaMetrics`` has its own ``CollectorRegistry``, so several apps in one process (the
tests) never collide, and nothing is registered in prometheus-client's global registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from coordinator.engine.state import ENDED_STATUSES, HistoryEntry, Phase, SagaState

__all__ = [
    "CONTENT_TYPE",
    "DEAD_LETTER_CATEGORIES",
    "ENDED_STATUSES",
    "SERVICE_COUNTERS",
    "RoundTripCollector",
    "SagaMetrics",
    "ServiceCounters",
    "ServiceStatsCollector",
    "StepEnded",
    "TransitionFacts",
    "new_history",
    "transition_facts",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST

DEAD_LETTER_CATEGORIES = (
    "too_large",
    "not_json",
    "not_object",
    "too_deep",
    "missing_routing_key",
    "missing_header",
    "bad_header",
    "unknown_status",
    "bad_body",
    "bad_trigger_key",
    "delivery_limit",
    "other",
)
"""The ``category`` label of ``saga_dead_letters_total``; anything else counts as ``other``."""

DEAD_LETTER_QUEUES = ("events", "replies")


DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
CONFIRM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


# -- the pure part ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StepEnded:
    """A step's action or compensation reached its outcome in this transition."""

    step: str
    kind: str
    seconds: float


@dataclass(frozen=True, slots=True)
class TransitionFacts:
    """What one transition means for the metrics."""

    definition: str
    started: bool = False
    ended: str | None = None
    """``completed``, ``compensated`` or ``failed`` when this transition reached it."""
    saga_seconds: float | None = None
    steps_ended: tuple[StepEnded, ...] = ()
    retries: tuple[tuple[str, str], ...] = ()
    """(step, kind) of every retry scheduled."""
    timeouts: tuple[tuple[str, str], ...] = ()
    """(step, kind) of every attempt that timed out."""


def new_history(before: SagaState | None, after: SagaState) -> list[HistoryEntry]:
    """The history entries ``after`` has that ``before`` had not (trimming accounted for)."""
    if before is None:
        return list(after.history)
    added = (len(after.history) + after.history_dropped) - (
        len(before.history) + before.history_dropped
    )
    if added <= 0:
        return []
    return list(after.history[-added:])


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _ended_phases(before: SagaState | None, after: SagaState) -> Iterator[StepEnded]:
    old_steps = {step.name: step for step in before.steps} if before is not None else {}
    for step in after.steps:
        old = old_steps.get(step.name)
        for kind in ("action", "compensation"):
            phase: Phase = getattr(step, kind)
            if phase.finished_at is None:
                continue
            if old is not None and getattr(old, kind).finished_at == phase.finished_at:
                continue
            seconds = _seconds(phase.started_at, phase.finished_at)
            if seconds is not None:
                yield StepEnded(step.name, kind, seconds)


def transition_facts(before: SagaState | None, after: SagaState) -> TransitionFacts:
    """Compare an instance before and after one transition (``before`` None: a start)."""
    ended: str | None = None
    saga_seconds: float | None = None
    if after.status in ENDED_STATUSES and (before is None or before.status != after.status):
        ended = after.status
        saga_seconds = _seconds(after.created_at, after.updated_at)
    retries: list[tuple[str, str]] = []
    timeouts: list[tuple[str, str]] = []
    for entry in new_history(before, after):
        kind, _, what = entry.event.partition(".")
        if kind not in ("action", "compensation"):
            continue
        if what == "retry_scheduled":
            retries.append((entry.step or "", kind))
        elif what == "timed_out":
            timeouts.append((entry.step or "", kind))
    return TransitionFacts(
        definition=after.definition,
        started=before is None,
        ended=ended,
        saga_seconds=saga_seconds,
        steps_ended=tuple(_ended_phases(before, after)),
        retries=tuple(retries),
        timeouts=tuple(timeouts),
    )


def dead_letter_category(category: str) -> str:
    return category if category in DEAD_LETTER_CATEGORIES else "other"


# -- the registry -----------------------------------------------------------------------
class RoundTripCollector(Collector):
    """``saga_db_round_trips_total{command}``, read from a counter at scrape time."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "saga_db_round_trips",
            "MongoDB commands sent (round trips), by command name.",
            labels=["command"],
        )
        for command, count in sorted(dict(self._counts()).items()):
            family.add_metric([command], count)
        yield family


class ServiceCounters(Protocol):
    """What ``ServiceStatsCollector`` reads: ``coordinator.service.ServiceStats``."""

    @property
    def conflicts(self) -> int: ...
    @property
    def published(self) -> int: ...
    @property
    def relayed(self) -> int: ...
    @property
    def timers_fired(self) -> int: ...
    @property
    def outbox_cleared(self) -> int: ...
    @property
    def outbox_flushes(self) -> int: ...
    @property
    def events_matched(self) -> int: ...
    @property
    def events_buffered(self) -> int: ...
    @property
    def events_expired(self) -> int: ...


SERVICE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    (
        "conflicts",
        "saga_save_conflicts",
        "Conditional saves that lost a race (another writer saved the saga first); "
        "each one's transition was recomputed from a fresh read.",
    ),
    (
        "published",
        "saga_commands_published",
        "Commands published and confirmed by the broker, relayed ones included.",
    ),
    (
        "relayed",
        "saga_commands_relayed",
        "Outbox commands found unpublished (older than the relay age) and published "
        "again by the relay.",
    ),
    (
        "timers_fired",
        "saga_timers_fired",
        "Due timers (attempt timeouts, backoffs, saga deadlines) claimed and applied.",
    ),
    (
        "outbox_cleared",
        "saga_outbox_entries_cleared",
        "Published commands removed from the sagas' outboxes by the batched clear.",
    ),
    (
        "outbox_flushes",
        "saga_outbox_clear_batches",
        "Batched outbox clears sent to the store (one round trip each).",
    ),
    (
        "events_matched",
        "saga_events_matched",
        "Await steps completed by an event (from the events exchange, the buffer or REST).",
    ),
    (
        "events_buffered",
        "saga_events_buffered",
        "Awaited events kept in the buffer for steps that start waiting later (every event "
        "of an awaited type is kept, then delivered to the sagas already waiting).",
    ),
    (
        "events_expired",
        "saga_events_expired",
        "Kept events whose buffer time passed without completing any step, counted by "
        "this process's sweep (each one by one replica only).",
    ),
)
"""(``ServiceStats`` attribute, metric name without ``_total``, HELP) of every counter the
service keeps that is exported as is. ``ServiceStats.transitions`` is not here: it is
``saga_transitions_total``, counted by ``record_transition`` (the same events)."""


class ServiceStatsCollector(Collector):
    """The service's own counters (``SagaService.stats``), read at scrape time."""

    def __init__(self, stats: Callable[[], ServiceCounters]) -> None:
        self._stats = stats

    def describe(self) -> Iterable[Metric]:
        """The names, without reading the stats (the registry checks them at registration)."""
        for _, name, documentation in SERVICE_COUNTERS:
            yield CounterMetricFamily(name, documentation)

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        for attribute, name, documentation in SERVICE_COUNTERS:
            yield CounterMetricFamily(name, documentation, value=getattr(stats, attribute))


class SagaMetrics:
    """Every metric of one coordinator, in its own registry.

    Args:
        round_trips: the MongoDB commands sent so far by name (``RoundTripCounter.counts``).
        registry: where to register; a new one by default.
    """

    def __init__(
        self,
        *,
        round_trips: Callable[[], Mapping[str, int]] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        by_definition = ["definition"]
        self.started = Counter("saga_sagas_started", "Sagas started.", by_definition, registry=r)
        self.completed = Counter(
            "saga_sagas_completed", "Sagas that completed.", by_definition, registry=r
        )
        self.compensated = Counter(
            "saga_sagas_compensated", "Sagas that were compensated.", by_definition, registry=r
        )
        self.failed = Counter(
            "saga_sagas_failed",
            "Sagas that became failed (waiting for an operator).",
            by_definition,
            registry=r,
        )
        self.in_flight = Gauge(
            "saga_sagas_in_flight",
            "Sagas not completed nor compensated, by status; counted at scrape time.",
            ["definition", "status"],
            registry=r,
        )
        self.saga_duration = Histogram(
            "saga_duration_seconds",
            "From a saga's start to its completed, compensated or failed status.",
            ["definition", "status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.step_duration = Histogram(
            "saga_step_duration_seconds",
            "From a step's first attempt to its outcome, retries included.",
            ["definition", "step", "kind"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "saga_step_retries",
            "Step attempts that failed and were scheduled again.",
            ["definition", "step", "kind"],
            registry=r,
        )
        self.timeouts = Counter(
            "saga_step_timeouts",
            "Step attempts that timed out.",
            ["definition", "step", "kind"],
            registry=r,
        )
        self.transitions = Counter(
            "saga_transitions", "Transitions persisted (starts included).", registry=r
        )
        self.dead_letters = Counter(
            "saga_dead_letters",
            "Messages dead-lettered, by queue and reason category.",
            ["queue", "category"],
            registry=r,
        )
        self.message_failures = Counter(
            "saga_message_failures",
            "Unexpected errors (bugs) while handling a message, by queue; each try counts.",
            ["queue"],
            registry=r,
        )
        self.returned_commands = Counter(
            "saga_commands_returned",
            "Commands the broker returned: no queue bound for their participant.",
            registry=r,
        )
        self.confirm_latency = Histogram(
            "saga_publish_confirm_seconds",
            "From publishing a command to the broker's confirm.",
            buckets=CONFIRM_BUCKETS,
            registry=r,
        )
        for queue in DEAD_LETTER_QUEUES:
            for category in DEAD_LETTER_CATEGORIES:
                self.dead_letters.labels(queue, category)
        if round_trips is not None:
            r.register(RoundTripCollector(round_trips))

    # -- the service's one call per transition ---------------------------------------------
    def record_transition(self, before: SagaState | None, after: SagaState) -> None:
        """Count one persisted transition; never raises (metrics must not fail a saga)."""
        try:
            self._record(transition_facts(before, after))
        except Exception:  # pragma: no cover - a bug here must not stop the service
            log.exception("recording metrics for saga %s failed", after.id)

    def _record(self, facts: TransitionFacts) -> None:
        name = facts.definition
        self.transitions.inc()
        if facts.started:
            self.started.labels(name).inc()
        if facts.ended is not None:
            {"completed": self.completed, "compensated": self.compensated}.get(
                facts.ended, self.failed
            ).labels(name).inc()
            if facts.saga_seconds is not None:
                self.saga_duration.labels(name, facts.ended).observe(facts.saga_seconds)
        for ended in facts.steps_ended:
            self.step_duration.labels(name, ended.step, ended.kind).observe(ended.seconds)
        for step, kind in facts.retries:
            self.retries.labels(name, step, kind).inc()
        for step, kind in facts.timeouts:
            self.timeouts.labels(name, step, kind).inc()

    # -- the broker's reports (``coordinator.adapters.rabbit.BrokerObserver``) -----------------
    def dead_lettered(self, queue: str, category: str) -> None:
        self.dead_letters.labels(queue, dead_letter_category(category)).inc()

    def confirmed(self, seconds: float) -> None:
        self.confirm_latency.observe(seconds)

    def handler_failed(self, queue: str) -> None:
        self.message_failures.labels(queue).inc()

    def returned(self) -> None:
        self.returned_commands.inc()

    # -- scrape time -----------------------------------------------------------------------
    def set_in_flight(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Replace the in-flight gauge with ``{(definition, status): count}``."""
        self.in_flight.clear()
        for (definition, status), count in counts.items():
            self.in_flight.labels(definition, status).set(count)

    def track_service(self, stats: Callable[[], ServiceCounters]) -> None:
        """Export the service's counters (``lambda: service.stats``), read at every scrape.

        Raises:
            ValueError: a service is tracked already (its names are registered).
        """
        self.registry.register(ServiceStatsCollector(stats))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
