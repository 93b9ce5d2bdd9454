"""The MongoDB saga store, over PyMongo's async API.

Theory of operation
-------------------
Three collections. ``definitions`` holds one immutable document per (name, version)
(``mongo_definitions.MongoDefinitions``, to which the store delegates); ``event_buffer``
keeps awaited events, and the ``awaiting`` index of ``sagas`` finds the sagas an event
completes (``mongo_events.MongoEventBuffer``, delegated to as well).

``sagas`` holds ``SagaState.to_document()`` as is. ``revision`` is the optimistic-concurrency
counter: ``save_saga`` is a write filtered on the expected revision, an update of what
changed since the state the transition started from (``mongo_updates.saga_update``) where
that is smaller than the document, else a replace. Its indexes, one per query, are in
``mongo_indexes``.

Inserts and saves are group-committed (``GroupCommit``): the writes that arrive while one
batch is in flight leave together as one unordered ``bulk_write``, so under load a round
trip carries many transitions, and a quiet service still writes each one at once. An
insert's outcome is its own (a duplicate key comes back per item). The saves' matched
count is one figure for the batch: when it falls short of the number of saves, one read
of ``write_token`` — a random token each save writes — tells which saves won. A save
that won but was overwritten by another writer before that read is reported lost; the
service then recomputes the transition from a fresh read (the engine ignores what is
already applied), and the relay sends the won save's commands: slower, never wrong. A
batch that fails as a whole for a reason other than the connection (say, one document too
large) is retried one write at a time, so only the faulty write fails.

Two writes do not raise the revision because they change nothing the engine decides on: the
timer lease of ``claim_due`` (it only pushes ``wake_at``) and ``clear_outbox`` (it only
removes commands the broker has confirmed). A writer that saved a stale outbox afterwards
puts the cleared commands back, which costs a harmless resend (idempotency keys).

Datetimes: BSON stores milliseconds in UTC. The database handle is opened ``tz_aware`` in
UTC, so a stored state comes back as ``as_stored(state)``: every datetime UTC-aware and
truncated to the millisecond (a naive datetime is taken to be UTC). Engines that stamp
times with millisecond UTC datetimes see their states come back exactly equal.

Errors, by what they mean (``translate_errors``, chained with ``from``): MongoDB unreachable
or temporarily unable → ``StoreUnavailable`` (wait, try again, ``/readyz`` 503); data it can
never store — a document the encoder refuses (a NUL in a key, an integer over 8 bytes, a lone
surrogate), a write error (a key with a ``$``, nesting too deep), or a saga document over
its size budget (``max_saga_bytes``) → ``UnstorableData``, never retried. A conflict is no
error: ``save_saga`` returns False and the caller reloads and recomputes. No driver
exception travels above ``coordinator/adapters``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import uuid4

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import (
    ASCENDING,
    AsyncMongoClient,
    InsertOne,
    ReplaceOne,
    UpdateOne,
    WriteConcern,
)
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
)

from coordinator.adapters.mongo_definitions import MongoDefinitions, definition_hash
from coordinator.adapters.mongo_errors import (
    DEFAULT_MAX_SAGA_BYTES,
    DRIVER_ERRORS,
    UNSTORABLE_ERRORS,
    encode_saga,
    store_error,
    translate_errors,
    write_error,
)
from coordinator.adapters.mongo_events import MongoEventBuffer
from coordinator.adapters.mongo_indexes import DUE, RETIRED_INDEXES, STORE_INDEXES, UNPUBLISHED
from coordinator.adapters.mongo_updates import saga_update
from coordinator.adapters.monitor import RoundTripCounter
from coordinator.engine.state import SagaState
from coordinator.errors import AdapterError, StoreUnavailable, UnstorableData
from coordinator.ports import BufferedEvent, DuplicateSaga, StoredDefinition, WaitingSaga
from schemas.batching import GroupCommit, one_by_one
from schemas.definition import SagaDefinition

__all__ = [
    "DEFAULT_MAX_SAGA_BYTES",
    "UNSTORABLE_ERRORS",
    "MongoSagaStore",
    "RoundTripCounter",
    "as_stored",
    "definition_hash",
    "encode_saga",
    "make_client",
    "store_error",
    "stored_datetime",
    "translate_errors",
    "write_error",
]

Document = dict[str, Any]

_OLDEST_FIRST = {
    field: [(field, ASCENDING), ("_id", ASCENDING)] for field in ("wake_at", "updated_at")
}
"""Sort orders of ``claim_due`` and ``unpublished``: oldest first, ties by id."""

LEASE_FIELD = "lease_token"
"""Set by ``claim_due`` to find the documents one claim updated; dropped on read."""

WRITE_FIELD = "write_token"
"""Set by every ``save_saga`` to tell, after a batch, whose replace won; dropped on read."""

_DUPLICATE_KEY = 11000


@dataclass(frozen=True, slots=True)
class _Write:
    """One saga write of a batch: an insert (``expected`` None), or a conditional update
    (``update`` set) or replace of the stored document at revision ``expected``."""

    saga_id: str
    raw: RawBSONDocument
    expected: int | None
    token: str
    update: RawBSONDocument | None = None

    @classmethod
    def of(
        cls, state: SagaState, expected: int | None, max_bytes: int, base: SagaState | None = None
    ) -> _Write:
        """``state``'s document, carrying a fresh ``write_token``, encoded once (its size is
        the one the budget checks); with ``base``, also the update from ``base``'s document
        (``saga_update``), used when it is the smaller of the two."""
        doc = state.to_document()
        token = doc[WRITE_FIELD] = uuid4().hex
        raw = encode_saga(doc, max_bytes)
        update = None
        if base is not None and expected is not None:
            changes = saga_update(base, state)
            changes["$set"][WRITE_FIELD] = token
            with translate_errors(f"store saga {state.id!r}"):
                encoded = RawBSONDocument(bson.encode(changes))
            if len(encoded.raw) < len(raw.raw):
                update = encoded
        return cls(state.id, raw, expected, token, update)

    def request(self) -> InsertOne[Any] | UpdateOne | ReplaceOne[Any]:
        """The bulk-write request of this write."""
        if self.expected is None:
            return InsertOne(self.raw)
        condition = {"_id": self.saga_id, "revision": self.expected}
        if self.update is not None:
            return UpdateOne(condition, self.update)
        return ReplaceOne(condition, self.raw)

    def as_replace(self) -> _Write:
        return _Write(self.saga_id, self.raw, self.expected, self.token)


# -- the stored form, shared with the in-memory double ----------------------------------
def stored_datetime(value: datetime) -> datetime:
    """``value`` as BSON gives it back: UTC-aware, truncated to the millisecond."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _stored_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return stored_datetime(value)
    if isinstance(value, dict):
        return {key: _stored_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_stored_value(item) for item in value]
    return value


def as_stored(state: SagaState) -> SagaState:
    """The state a store gives back after storing ``state`` (datetimes at BSON precision)."""
    return SagaState.from_document(_stored_value(state.to_document()))


# -- round trips and errors ---------------------------------------------------------------
def make_client(
    url: str, *, counter: RoundTripCounter | None = None, **kwargs: Any
) -> AsyncMongoClient[Document]:
    """An ``AsyncMongoClient`` giving UTC-aware datetimes, optionally counting round trips."""
    kwargs.setdefault("tz_aware", True)
    kwargs.setdefault("tzinfo", UTC)
    if counter is not None:
        kwargs["event_listeners"] = [*kwargs.get("event_listeners", ()), counter]
    return AsyncMongoClient(url, **kwargs)


def journaled(concern: WriteConcern) -> WriteConcern:
    """``concern`` (the URL's ``w``, ``wtimeoutMS``…) with ``j=True``.

    A write is acknowledged only once it is in the server's journal, so a crash of the
    database after the acknowledgement cannot undo it (SPEC §4: a transition, once
    acknowledged, is never lost). Without it a standalone server may lose acknowledged writes
    on a hard crash.
    """
    return WriteConcern(**{**concern.document, "j": True})


# -- the store --------------------------------------------------------------------------
class MongoSagaStore:
    """``SagaStore`` over MongoDB: collections ``definitions`` and ``sagas``."""

    def __init__(
        self,
        client: AsyncMongoClient[Any],
        database: str,
        *,
        owns_client: bool = False,
        max_batch: int = 256,
        writes_in_flight: int = 1,
        max_saga_bytes: int = DEFAULT_MAX_SAGA_BYTES,
    ) -> None:
        self._client = client
        self._max_saga_bytes = max_saga_bytes
        self._owns_client = owns_client
        db = client.get_database(
            database,
            codec_options=CodecOptions(document_class=dict, tz_aware=True, tzinfo=UTC),
            write_concern=journaled(client.write_concern),
        )
        self._db = db
        self._sagas: AsyncCollection[Document] = db["sagas"]
        self._definitions = MongoDefinitions(db["definitions"])
        self._events = MongoEventBuffer(self._sagas, db["event_buffer"])
        self._writes: GroupCommit[_Write, bool] = GroupCommit(
            self._write_batch, max_batch=max_batch, max_in_flight=writes_in_flight
        )

    @classmethod
    def connect(cls, url: str, database: str, **kwargs: Any) -> MongoSagaStore:
        """A store with its own client; ``close()`` closes that client."""
        options = {
            name: kwargs.pop(name)
            for name in ("max_batch", "writes_in_flight", "max_saga_bytes")
            if name in kwargs
        }
        return cls(make_client(url, **kwargs), database, owns_client=True, **options)

    async def close(self) -> None:
        """Finish the writes in flight; close the client if this store created it."""
        await self._writes.drain()
        if self._owns_client:
            await self._client.close()

    async def ensure_indexes(self) -> None:
        with translate_errors("create the indexes"):
            await self._sagas.create_indexes(STORE_INDEXES)
            existing = [index["name"] async for index in await self._sagas.list_indexes()]
            for name in RETIRED_INDEXES:
                if name in existing:
                    await self._sagas.drop_index(name)
            await self._definitions.ensure_indexes()
            await self._events.ensure_indexes()

    async def ping(self) -> None:
        with translate_errors("answer a ping"):
            await self._db.command("ping")

    # -- definitions (``MongoDefinitions``) --------------------------------------------
    async def register_definition(
        self, definition: SagaDefinition, source: str
    ) -> Literal["created", "identical"]:
        return await self._definitions.register(definition, source)

    async def get_definition(
        self, name: str, version: int | None = None
    ) -> StoredDefinition | None:
        return await self._definitions.get(name, version)

    async def latest_definitions(self) -> list[StoredDefinition]:
        return await self._definitions.latest()

    async def definition_versions(self, name: str) -> list[StoredDefinition]:
        return await self._definitions.versions(name)

    async def retire_definition(self, name: str) -> bool:
        return await self._definitions.retire(name)

    async def trigger_events(self) -> set[str]:
        return await self._definitions.trigger_events()

    async def awaiting_definitions(self) -> list[StoredDefinition]:
        return await self._definitions.awaiting()

    # -- awaited events (``MongoEventBuffer``) ------------------------------------------
    async def waiting_sagas(
        self, event_type: str, values: Sequence[str | int | float], after: str | None, limit: int
    ) -> list[WaitingSaga]:
        return await self._events.waiting_sagas(event_type, values, after, limit)

    async def recently_waiting(
        self, since: datetime, after: str | None, limit: int
    ) -> list[WaitingSaga]:
        return await self._events.recently_waiting(since, after, limit)

    async def buffer_event(self, event: BufferedEvent) -> bool:
        return await self._events.buffer_event(event)

    async def buffered_events(
        self, event_type: str, value: str | int | float, now: datetime, limit: int
    ) -> list[BufferedEvent]:
        return await self._events.buffered_events(event_type, value, now, limit)

    async def event_matched(self, event_id: str) -> None:
        await self._events.event_matched(event_id)

    async def expire_events(self, now: datetime) -> int:
        return await self._events.expire_events(now)

    # -- instances ----------------------------------------------------------------------
    @staticmethod
    def _state(doc: Document) -> SagaState:
        doc.pop(LEASE_FIELD, None)
        doc.pop(WRITE_FIELD, None)
        return SagaState.from_document(doc)

    async def insert_saga(self, state: SagaState) -> None:
        """Insert; a taken (definition, key) — or saga id — raises ``DuplicateSaga``."""
        inserted = await self._writes.submit(_Write.of(state, None, self._max_saga_bytes))
        if not inserted:
            with translate_errors("find the saga holding a key"):
                existing = None
                if state.key is not None:
                    existing = await self._sagas.find_one(
                        {"key": state.key, "definition": state.definition}
                    )
                if existing is None:
                    existing = await self._sagas.find_one({"_id": state.id})
                if existing is None:  # pragma: no cover - sagas are never deleted
                    raise StoreUnavailable(f"saga {state.id!r}: duplicate key, yet no holder")
                raise DuplicateSaga(self._state(existing)) from None

    async def find_saga(self, definition: str, key: str) -> SagaState | None:
        """The instance of ``definition`` for business key ``key``, if any."""
        with translate_errors("find a saga"):
            doc = await self._sagas.find_one({"key": key, "definition": definition})
        return None if doc is None else self._state(doc)

    async def drop_database(self) -> None:
        """Drop the whole database: for throw-away databases (the demo's, tests')."""
        with translate_errors("drop the database"):
            await self._client.drop_database(self._db.name)

    async def load_saga(self, saga_id: str) -> SagaState | None:
        with translate_errors("load a saga"):
            doc = await self._sagas.find_one({"_id": saga_id})
        return None if doc is None else self._state(doc)

    async def save_saga(
        self, state: SagaState, expected_revision: int, base: SagaState | None = None
    ) -> bool:
        write = _Write.of(state, expected_revision, self._max_saga_bytes, base)
        return await self._writes.submit(write)

    async def _write_batch(self, batch: Sequence[_Write]) -> list[bool | BaseException]:
        """One unordered bulk write; per write: inserted / saved (True) or not (False)."""
        requests = [write.request() for write in batch]
        details: Mapping[str, Any]
        try:
            details = (await self._sagas.bulk_write(requests, ordered=False)).bulk_api_result
        except BulkWriteError as exc:
            details = exc.details
        except DRIVER_ERRORS as exc:
            if len(batch) > 1 and not isinstance(exc, ConnectionFailure):
                # Part of the batch may have landed: a write that now finds its own token
                # in place (a duplicate insert, an unmatched replace) had landed then.
                return await one_by_one(
                    batch, self._write_batch, self._settle_by_token, errors=AdapterError
                )
            raise store_error(exc, "save sagas") from exc
        if details.get("writeConcernErrors"):
            concern = details["writeConcernErrors"][0].get("errmsg", "")
            raise StoreUnavailable(f"MongoDB did not confirm saving sagas: {concern}")
        outcomes: list[bool | BaseException] = [True] * len(batch)
        for error in details.get("writeErrors", []):
            index, code = error["index"], error.get("code")
            if batch[index].expected is None and code == _DUPLICATE_KEY:
                outcomes[index] = False
            else:
                outcomes[index] = write_error(error, f"save saga {batch[index].saga_id!r}")
        refused = [
            index
            for index, write in enumerate(batch)
            if write.update is not None and isinstance(outcomes[index], UnstorableData)
        ]
        if refused:  # an update the server refuses wrote nothing: the whole document decides
            again: Sequence[bool | BaseException]
            try:
                again = await self._write_batch([batch[index].as_replace() for index in refused])
            except AdapterError as exc:
                again = [exc] * len(refused)
            for index, outcome in zip(refused, again, strict=True):
                outcomes[index] = outcome
        replaced = [
            index
            for index, write in enumerate(batch)
            if write.expected is not None and outcomes[index] is True and index not in refused
        ]
        matched = details.get("nMatched", 0)
        if matched == 0 or len(replaced) == 1:  # the count alone tells
            for index in replaced:
                outcomes[index] = matched > 0
        elif matched < len(replaced):
            await self._settle_by_token(batch, replaced, outcomes)
        return outcomes

    async def _settle_by_token(
        self, batch: Sequence[_Write], indexes: list[int], outcomes: list[bool | BaseException]
    ) -> None:
        """Set ``outcomes[i]``: whether the stored document carries write ``i``'s token."""
        ids = list({batch[index].saga_id for index in indexes})
        with translate_errors("read back saved sagas"):
            cursor = self._sagas.find({"_id": {"$in": ids}}, {WRITE_FIELD: 1})
            tokens = {doc["_id"]: doc.get(WRITE_FIELD) async for doc in cursor}
        for index in indexes:
            write = batch[index]
            outcomes[index] = tokens.get(write.saga_id) == write.token

    async def claim_due(self, now: datetime, lease: timedelta, limit: int) -> list[SagaState]:
        """Claim due instances in at most three round trips, whatever ``limit`` is.

        1. find the ids of up to ``limit`` due instances (an idle poll stops here);
        2. ``update_many`` those still due (the filter is re-checked atomically per
           document, so of two concurrent claimers only one updates each document),
           setting ``wake_at = now + lease`` and a fresh ``lease_token``;
        3. read back the documents carrying this claim's token.
        """
        if limit <= 0:
            return []
        due_filter = {"wake_at": {**DUE["wake_at"], "$lte": now}}  # served by ``due``
        with translate_errors("claim due sagas"):
            cursor = self._sagas.find(due_filter, {"_id": 1}).sort(_OLDEST_FIRST["wake_at"])
            ids = [doc["_id"] async for doc in cursor.limit(limit)]
            if not ids:
                return []
            token = uuid4().hex
            result = await self._sagas.update_many(
                {"_id": {"$in": ids}, **due_filter},
                {"$set": {"wake_at": now + lease, LEASE_FIELD: token}},
            )
            if result.modified_count == 0:
                return []
            docs = [d async for d in self._sagas.find({"_id": {"$in": ids}, LEASE_FIELD: token})]
        order = {saga_id: index for index, saga_id in enumerate(ids)}
        docs.sort(key=lambda doc: order[doc["_id"]])
        return [self._state(doc) for doc in docs]

    async def unpublished(self, older_than: datetime, limit: int) -> list[SagaState]:
        if limit <= 0:
            return []
        query = {**UNPUBLISHED, "updated_at": {"$lt": older_than}}  # ``unpublished_outbox``
        with translate_errors("find unpublished commands"):
            cursor = self._sagas.find(query).sort(_OLDEST_FIRST["updated_at"]).limit(limit)
            return [self._state(doc) async for doc in cursor]

    async def clear_outbox(self, published: Sequence[tuple[str, str]]) -> None:
        by_saga: dict[str, list[str]] = defaultdict(list)
        for saga_id, message_id in published:
            by_saga[saga_id].append(message_id)
        if not by_saga:
            return
        updates = [
            UpdateOne({"_id": saga_id}, {"$pull": {"outbox": {"message_id": {"$in": ids}}}})
            for saga_id, ids in by_saga.items()
        ]
        with translate_errors("clear published commands"):
            await self._sagas.bulk_write(updates, ordered=False)
