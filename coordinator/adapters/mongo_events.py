"""Awaited events in MongoDB: the ``awaiting`` index of ``sagas`` and the ``event_buffer``.

Correlation reads ``sagas`` through one index, ``awaiting`` on ``awaiting.event`` +
``awaiting.value``, partial on a first waiting entry (``mongo_indexes.WAITING``, where the
collection's indexes are listed): only sagas with a waiting step are
in it, so it costs nothing to the others, and a query for (event type, value) touches only
the sagas waiting for exactly that. ``recently_waiting`` reads ``awaiting.since`` through a
second partial index (the recovery pass at start-up).

``event_buffer`` keeps each awaited event, by type and correlation values, until its
``expires_at`` (the longest ``buffer`` of the definitions awaiting that type). Its
``state`` is ``buffered`` until the event completes a step (``matched``) or its time passes
without that (``expired``, set by ``expire_events``: an atomic ``update_many``, so each
expired event is counted once whichever replica sweeps). A TTL index deletes the document
at ``purge_at``, an hour after ``expires_at``, leaving the sweep time to count it first.
Look-ups filter on ``expires_at`` themselves: the TTL monitor runs only once a minute.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from coordinator.adapters.mongo_errors import translate_errors
from coordinator.adapters.mongo_indexes import AWAITING_INDEXES, WAITING
from coordinator.engine.state import Awaiting
from coordinator.ports import BufferedEvent, WaitingSaga

__all__ = ["PURGE_GRACE", "MongoEventBuffer"]

Document = dict[str, Any]

PURGE_GRACE = timedelta(hours=1)
"""How long after ``expires_at`` the TTL index deletes a kept event."""

_WAITING_FIELDS = {"definition": 1, "definition_version": 1, "awaiting": 1}


def _waiting(doc: Document) -> WaitingSaga:
    return WaitingSaga(
        id=doc["_id"],
        definition=doc["definition"],
        definition_version=doc["definition_version"],
        awaiting=[Awaiting.model_validate(entry) for entry in doc.get("awaiting", [])],
    )


def _buffered(doc: Document) -> BufferedEvent:
    return BufferedEvent(
        id=doc["_id"],
        event_type=doc["event_type"],
        body=doc["body"],
        message_id=doc["message_id"],
        values=tuple(doc.get("values", ())),
        received_at=doc["received_at"],
        expires_at=doc["expires_at"],
    )


class MongoEventBuffer:
    """Finds waiting sagas and keeps awaited events; ``MongoSagaStore`` delegates here."""

    def __init__(self, sagas: AsyncCollection[Document], events: AsyncCollection[Document]) -> None:
        self._sagas = sagas
        self._events = events

    async def ensure_indexes(self) -> None:
        await self._sagas.create_indexes(AWAITING_INDEXES)
        await self._events.create_indexes(
            [
                IndexModel(
                    [("event_type", ASCENDING), ("values", ASCENDING), ("received_at", ASCENDING)],
                    name="correlation",
                ),
                IndexModel(
                    [("expires_at", ASCENDING)],
                    name="buffered_expiry",
                    partialFilterExpression={"state": "buffered"},
                ),
                IndexModel([("purge_at", ASCENDING)], name="purge", expireAfterSeconds=0),
            ]
        )

    async def waiting_sagas(
        self, event_type: str, values: Sequence[str | int | float], after: str | None, limit: int
    ) -> list[WaitingSaga]:
        query: Document = {
            **WAITING,
            "awaiting": {"$elemMatch": {"event": event_type, "value": {"$in": list(values)}}},
            "status": "running",
        }
        if after is not None:
            query["_id"] = {"$gt": after}
        with translate_errors("find the sagas waiting for an event"):
            cursor = self._sagas.find(query, _WAITING_FIELDS).sort("_id", ASCENDING).limit(limit)
            return [_waiting(doc) async for doc in cursor]

    async def recently_waiting(
        self, since: datetime, after: str | None, limit: int
    ) -> list[WaitingSaga]:
        query: Document = {**WAITING, "awaiting.since": {"$gte": since}, "status": "running"}
        if after is not None:
            query["_id"] = {"$gt": after}
        with translate_errors("find the sagas waiting since a time"):
            cursor = self._sagas.find(query, _WAITING_FIELDS).sort("_id", ASCENDING).limit(limit)
            return [_waiting(doc) async for doc in cursor]

    async def buffer_event(self, event: BufferedEvent) -> bool:
        doc: Document = {
            "_id": event.id,
            "event_type": event.event_type,
            "body": event.body,
            "message_id": event.message_id,
            "values": list(event.values),
            "received_at": event.received_at,
            "expires_at": event.expires_at,
            "purge_at": event.expires_at + PURGE_GRACE,
            "state": "buffered",
        }
        with translate_errors("keep an awaited event"):
            try:
                await self._events.insert_one(doc)
            except DuplicateKeyError:
                return False
        return True

    async def buffered_events(
        self, event_type: str, value: str | int | float, now: datetime, limit: int
    ) -> list[BufferedEvent]:
        query = {"event_type": event_type, "values": value, "expires_at": {"$gt": now}}
        with translate_errors("look up kept events"):
            cursor = self._events.find(query).sort("received_at", ASCENDING).limit(limit)
            return [_buffered(doc) async for doc in cursor]

    async def event_matched(self, event_id: str) -> None:
        with translate_errors("mark a kept event matched"):
            await self._events.update_one(
                {"_id": event_id, "state": "buffered"}, {"$set": {"state": "matched"}}
            )

    async def expire_events(self, now: datetime) -> int:
        with translate_errors("count expired events"):
            result = await self._events.update_many(
                {"state": "buffered", "expires_at": {"$lte": now}},
                {"$set": {"state": "expired"}},
            )
        return result.modified_count
