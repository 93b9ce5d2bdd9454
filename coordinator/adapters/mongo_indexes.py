"""The indexes of the ``sagas`` collection: one per query, the smallest that serves it.

Every index costs every write that changes its keys (on ``mongod``; the embedded
SecantusDB rewrites every index entry of a document on each write), so the collection
carries exactly these, and ``ensure_indexes`` drops the ones earlier versions made.

=====================================  =============================================  ==========
query                                  index (keys; partial filter)                   who
=====================================  =============================================  ==========
load / save / claim read-back by id    ``_id_``                                       store
find by business key; one instance     ``key_definition_unique`` (key, definition;    store,
per (definition, key); listing         unique; ``key`` a string)                      listing
``?key=`` (a few documents, sorted
in memory)
timers due: ``claim_due``              ``due`` (wake_at; ``wake_at`` after            store
                                       ``EVER``: running sagas with a timer only)
relay: ``unpublished``                 ``unpublished_outbox`` (updated_at; the first  store
                                       outbox entry has a timestamp: sagas with
                                       unpublished commands only)
listing, newest first                  ``list_created`` (created_at ↓, _id ↓)         listing
listing ``?definition=``               ``list_definition_created``                    listing
listing ``?status=``, sagas in         ``list_status_created``                        listing
flight (``$in`` unfinished statuses)
awaited event: ``waiting_sagas``       ``awaiting`` (awaiting.event, awaiting.value;  events
                                       sagas with a waiting step only)
recovery: ``recently_waiting``         ``awaiting_since`` (awaiting.since; same       events
                                       filter)
=====================================  =============================================  ==========

Partial filters are written as comparisons (``$gt`` an instant before any real one, ``$gte``
the empty string) rather than ``$exists``/``$type``, and the queries repeat them: ``mongod``
then sees at once that the query implies the filter, and so does SecantusDB, whose planner
understands comparisons only. A finished saga has no timer and no outbox, so it has no entry
in ``due`` or ``unpublished_outbox``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel

__all__ = [
    "AWAITING_INDEXES",
    "DUE",
    "EVER",
    "LISTING_INDEXES",
    "RETIRED_INDEXES",
    "STORE_INDEXES",
    "UNPUBLISHED",
    "WAITING",
    "indexed_paths",
    "saga_index_paths",
]

EVER = datetime(1, 1, 1, tzinfo=UTC)
"""An instant before any the coordinator stores: ``{field: {"$gt": EVER}}`` means "set"."""

DUE: dict[str, Any] = {"wake_at": {"$gt": EVER}}
"""The partial filter of ``due``; ``claim_due`` adds ``$lte: now`` to the same clause."""

UNPUBLISHED: dict[str, Any] = {"outbox.0.timestamp": {"$gt": EVER}}
"""The partial filter of ``unpublished_outbox``: the outbox has an entry (every command has
a timestamp); ``unpublished`` repeats it."""

_NEWEST_FIRST = [("created_at", DESCENDING), ("_id", DESCENDING)]

STORE_INDEXES = [
    IndexModel(
        [("key", ASCENDING), ("definition", ASCENDING)],
        name="key_definition_unique",
        unique=True,
        partialFilterExpression={"key": {"$gte": ""}},
    ),
    IndexModel([("wake_at", ASCENDING)], name="due", partialFilterExpression=DUE),
    IndexModel(
        [("updated_at", ASCENDING)], name="unpublished_outbox", partialFilterExpression=UNPUBLISHED
    ),
]
"""The store's own queries: key look-up (and uniqueness), timers, relay."""

LISTING_INDEXES = [
    IndexModel(_NEWEST_FIRST, name="list_created"),
    IndexModel([("definition", ASCENDING), *_NEWEST_FIRST], name="list_definition_created"),
    IndexModel([("status", ASCENDING), *_NEWEST_FIRST], name="list_status_created"),
]
"""The listing's (``SagaQueries``): newest first, alone or under one filter; a ``key``
filter uses ``key_definition_unique``."""

RETIRED_INDEXES = (
    "definition_status_id",
    "status_id",
    "key",
    "definition_key_unique",  # now (key, definition), serving the listing's key filter too
    "list_key_created",
    "wake_at",  # now ``due``, without the finished sagas
    "unpublished",  # now ``unpublished_outbox``, a filter both servers' planners use
)
"""Indexes of earlier versions that nothing queries any more: dropped by ``ensure_indexes``
after the new ones exist (so uniqueness of (definition, key) never lapses)."""

WAITING: dict[str, Any] = {"awaiting.0.since": {"$gt": EVER}}
"""The partial filter of the awaited-event indexes: the saga has a waiting step. The look-ups
in ``mongo_events`` repeat it."""

AWAITING_INDEXES = [
    IndexModel(
        [("awaiting.event", ASCENDING), ("awaiting.value", ASCENDING)],
        name="awaiting",
        partialFilterExpression=WAITING,
    ),
    IndexModel(
        [("awaiting.since", ASCENDING)], name="awaiting_since", partialFilterExpression=WAITING
    ),
]
"""The awaited-event look-ups' (``MongoEventBuffer``): by (event type, correlation value),
and the sagas that started waiting since an instant; a saga without a waiting step has no
entry in either."""


def indexed_paths(models: list[IndexModel]) -> list[tuple[str, ...]]:
    """Per index, the document paths whose change may change its entries: its keys and
    the fields of its partial filter."""
    paths = []
    for model in models:
        document = model.document
        fields = list(document["key"])
        fields += list(document.get("partialFilterExpression", {}))
        paths.append(tuple(dict.fromkeys(fields)))
    return paths


def saga_index_paths() -> dict[str, list[tuple[str, ...]]]:
    """The ``sagas`` collection's indexes as ``RoundTripCounter`` takes them."""
    return {
        "sagas": [("_id",), *indexed_paths([*STORE_INDEXES, *LISTING_INDEXES, *AWAITING_INDEXES])]
    }
