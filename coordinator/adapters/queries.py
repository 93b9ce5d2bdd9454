"""Read-side queries over the ``sagas`` collection: listing with keyset pagination.

Theory of operation
-------------------
Sagas are listed newest first, ordered by ``(created_at, _id)`` descending. Both fields are
set once when the instance is inserted and never change, and ``_id`` is unique, so the order
is total and stable. A page ends with a cursor encoding the ``(created_at, _id)`` of its last
item; the next page asks for what sorts strictly after it::

    created_at < t  or  (created_at == t and _id < id)

Inserting or updating other sagas meanwhile cannot move an existing saga across that
boundary, so paging neither skips nor repeats any saga that existed when it began. Sagas
created after paging began sort before the first page (their ``created_at`` is later) and
are not shown; a saga inserted by a replica with a clock running behind may show up, once.

The cursor is opaque to clients: URL-safe base64 of a small JSON object. It carries the
position only, not the filters, so a client that changes the filters mid-way resumes from the
same position under the new filters.

The ``(created_at, _id)`` values in a cursor are the stored ones (UTC, millisecond
precision), read back from the database, so comparisons are exact.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from bson.codec_options import CodecOptions
from pymongo import DESCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from coordinator.adapters.mongo_errors import translate_errors
from coordinator.adapters.mongo_indexes import LISTING_INDEXES
from coordinator.engine.state import ErrorInfo
from coordinator.ports import MAX_LIMIT, InvalidCursor, SagaListPage, SagaRow

__all__ = [
    "IN_FLIGHT_STATUSES",
    "MAX_LIMIT",
    "InvalidCursor",
    "SagaListPage",
    "SagaQueries",
    "SagaRow",
]

_CURSOR_VERSION = 1
_PROJECTION = {
    "_id": 1,
    "definition": 1,
    "definition_version": 1,
    "key": 1,
    "status": 1,
    "reason": 1,
    "deadline": 1,
    "created_at": 1,
    "updated_at": 1,
}
_ORDER = [("created_at", DESCENDING), ("_id", DESCENDING)]
IN_FLIGHT_STATUSES = ("running", "compensating", "failed")
"""Every status but ``completed`` and ``compensated``: what ``in_flight`` counts."""

Document = dict[str, Any]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def encode_cursor(created_at: datetime, saga_id: str) -> str:
    payload = {"v": _CURSOR_VERSION, "t": _utc(created_at).isoformat(), "id": saga_id}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor names; raises ``InvalidCursor`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
        if payload["v"] != _CURSOR_VERSION or not isinstance(payload["id"], str):
            raise ValueError(payload)
        return _utc(datetime.fromisoformat(payload["t"])), payload["id"]
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise InvalidCursor(
            "the cursor is not one this API returned: pass `next_cursor` from the previous "
            "page unchanged, or omit `cursor` to start from the newest saga"
        ) from exc


def _row(doc: Document) -> SagaRow:
    reason = doc.get("reason")
    deadline = doc.get("deadline")
    return SagaRow(
        id=str(doc["_id"]),
        definition=doc["definition"],
        definition_version=int(doc["definition_version"]),
        key=doc.get("key"),
        status=doc["status"],
        reason=ErrorInfo.model_validate(reason) if reason else None,
        deadline=_utc(deadline) if isinstance(deadline, datetime) else None,
        created_at=_utc(doc["created_at"]),
        updated_at=_utc(doc["updated_at"]),
    )


class SagaQueries:
    """Listing queries over the ``sagas`` collection that ``MongoSagaStore`` writes."""

    def __init__(self, client: AsyncMongoClient[Any], database: str) -> None:
        db = client.get_database(
            database, codec_options=CodecOptions(document_class=dict, tz_aware=True, tzinfo=UTC)
        )
        self._sagas: AsyncCollection[Document] = db["sagas"]

    async def ensure_indexes(self) -> None:
        """The indexes that serve the listing: newest first, alone or under one filter
        (``mongo_indexes``; a ``key`` filter uses the store's ``key_definition_unique``)."""
        with translate_errors("create the listing indexes"):
            await self._sagas.create_indexes(LISTING_INDEXES)

    async def list_sagas(
        self,
        *,
        definition: str | None = None,
        status: str | None = None,
        key: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SagaListPage:
        """One page, newest first; ``next_cursor`` is None on the last page.

        Raises:
            InvalidCursor: ``cursor`` was not returned by this method.
            ValueError: ``limit`` is not within 1..500.
        """
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be within 1..{MAX_LIMIT}, not {limit}")
        conditions: list[Document] = []
        for field, value in (("key", key), ("definition", definition), ("status", status)):
            if value is not None:
                conditions.append({field: value})
        if cursor is not None:
            created_at, saga_id = decode_cursor(cursor)
            conditions.append(
                {
                    "$or": [
                        {"created_at": {"$lt": created_at}},
                        {"created_at": created_at, "_id": {"$lt": saga_id}},
                    ]
                }
            )
        query: Document = (
            {"$and": conditions} if len(conditions) > 1 else next(iter(conditions), {})
        )
        with translate_errors("list sagas"):
            docs = (
                await self._sagas.find(query, _PROJECTION).sort(_ORDER).limit(limit + 1).to_list()
            )
        rows = [_row(doc) for doc in docs[:limit]]
        next_cursor = None
        if len(docs) > limit:
            last = rows[-1]
            next_cursor = encode_cursor(last.created_at, last.id)
        return SagaListPage(items=rows, next_cursor=next_cursor)

    async def in_flight(self) -> dict[tuple[str, str], int]:
        """``{(definition, status): count}`` of the sagas not completed nor compensated.

        One aggregation; its ``$match`` on the status uses the ``list_status_created``
        index, so it reads the unfinished instances only, however many finished ones there
        are.
        """
        pipeline: list[Document] = [
            {"$match": {"status": {"$in": list(IN_FLIGHT_STATUSES)}}},
            {
                "$group": {
                    "_id": {"definition": "$definition", "status": "$status"},
                    "count": {"$sum": 1},
                }
            },
        ]
        with translate_errors("count the sagas in flight"):
            cursor = await self._sagas.aggregate(pipeline)
            groups = await cursor.to_list()
        return {
            (str(group["_id"]["definition"]), str(group["_id"]["status"])): int(group["count"])
            for group in groups
        }
