"""The MongoDB saga store, over PyMongo's async API.

Theory of operation
-------------------
Two collections. ``definitions`` holds one immutable document per (name, version), with
``_id = "{name}@{version}"`` and the sha256 of the definition's canonical JSON, so that a
second registration is either identical or a conflict. Because definitions never change,
every one read is cached in memory by (name, version).

``sagas`` holds ``SagaState.to_document()`` as is. ``revision`` is the optimistic-concurrency
counter: ``save_saga`` is a replace filtered on the expected revision.

Inserts and saves are group-committed (``GroupCommit``): the writes that arrive while one
batch is in flight leave together as one unordered ``bulk_write``, so under load a round
trip carries many transitions, and a quiet service still writes each one at once. An
insert's outcome is its own (a duplicate key comes back per item). The replaces' matched
count is one figure for the batch: when it falls short of the number of replaces, one read
of ``write_token`` — a random token each save writes — tells which replaces won. A replace
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

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import uuid4

import bson
from bson.codec_options import CodecOptions
from bson.errors import BSONError
from bson.raw_bson import RawBSONDocument
from pymongo import (
    ASCENDING,
    DESCENDING,
    AsyncMongoClient,
    IndexModel,
    InsertOne,
    ReplaceOne,
    UpdateOne,
    WriteConcern,
)
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    WriteError,
)
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from coordinator.adapters.batching import GroupCommit
from coordinator.engine.state import SagaState
from coordinator.errors import AdapterError, DefinitionConflict, StoreUnavailable, UnstorableData
from coordinator.ports import DuplicateSaga, StoredDefinition
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

_RETIRED_INDEXES = ("definition_status_id", "status_id", "key")
"""Indexes of earlier versions that nothing queries any more: dropped by ``ensure_indexes``
(every index costs every write)."""


@dataclass(frozen=True, slots=True)
class _Write:
    """One saga write of a batch: an insert (``expected`` None) or a conditional replace."""

    saga_id: str
    raw: RawBSONDocument
    expected: int | None
    token: str

    @classmethod
    def of(cls, state: SagaState, expected: int | None, max_bytes: int) -> _Write:
        """``state``'s document, carrying a fresh ``write_token``, encoded once."""
        doc = state.to_document()
        token = doc[WRITE_FIELD] = uuid4().hex
        return cls(state.id, encode_saga(doc, max_bytes), expected, token)


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


def definition_hash(definition: SagaDefinition) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the definition."""
    canonical = json.dumps(
        definition.model_dump(mode="json"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# -- round trips and errors ---------------------------------------------------------------
class RoundTripCounter(CommandListener):
    """Counts the commands a client sends, by command name (``update``, ``find``, …)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        self.counts.clear()

    def started(self, event: CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


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


_TRANSIENT_CODES = frozenset(
    {6, 7, 50, 64, 89, 91, 112, 189, 251, 262, 9001, 10107, 11600, 11602, 13435, 13436}
)
"""Server error codes that mean "not now" (host unreachable, shutting down, not primary,
write conflict, time limit…): the same operation may succeed later."""

UNSTORABLE_ERRORS: tuple[type[BaseException], ...] = (
    BSONError,  # InvalidDocument (a NUL in a key), DocumentTooLarge, InvalidStringData
    OverflowError,  # an integer over 8 bytes
    UnicodeEncodeError,  # a lone surrogate in a string
    RecursionError,  # nesting beyond what the encoder can walk
)
"""What the driver raises for data it can never encode."""

_DRIVER_ERRORS: tuple[type[BaseException], ...] = (PyMongoError, *UNSTORABLE_ERRORS)


def store_error(exc: BaseException, operation: str) -> AdapterError:
    """The coordinator's error for a driver error, by what it means.

    Unreachable or temporarily unable (connection failures, timeouts, a failover, the
    transient server codes) → ``StoreUnavailable``: wait and try again. Data that can never
    be stored (the encoder refuses it, or the server refuses the document with a write
    error) → ``UnstorableData``: never retried. Anything else → ``StoreUnavailable``, the
    cautious choice: nothing is given up on an error that is not understood.
    """
    message = f"MongoDB failed to {operation}: {exc}"
    if isinstance(exc, UNSTORABLE_ERRORS):
        return UnstorableData(f"cannot {operation}: the data cannot be stored: {exc}")
    if isinstance(exc, ConnectionFailure):
        return StoreUnavailable(message)
    if isinstance(exc, OperationFailure):
        transient = exc.code in _TRANSIENT_CODES or any(
            exc.has_error_label(label) for label in ("RetryableWriteError", "ResetPool")
        )
        if isinstance(exc, WriteError) and not transient:
            return UnstorableData(f"cannot {operation}: MongoDB refuses the data: {exc}")
    return StoreUnavailable(message)


def write_error(error: Mapping[str, Any], operation: str) -> AdapterError:
    """The coordinator's error for one entry of a bulk write's ``writeErrors``."""
    message = error.get("errmsg", "")
    if error.get("code") in _TRANSIENT_CODES:
        return StoreUnavailable(f"MongoDB failed to {operation}: {message}")
    return UnstorableData(f"cannot {operation}: MongoDB refuses the data: {message}")


@contextmanager
def translate_errors(operation: str) -> Iterator[None]:
    """Re-raise driver errors as ``StoreUnavailable`` or ``UnstorableData`` (``store_error``),
    chained with ``from``."""
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise store_error(exc, operation) from exc


DEFAULT_MAX_SAGA_BYTES = 8 * 1024 * 1024
"""A saga document's size budget: half of MongoDB's 16 MiB, so no saga nears the hard limit."""


def encode_saga(doc: Document, max_bytes: int) -> RawBSONDocument:
    """``doc`` as BSON, once; raises ``UnstorableData`` when it cannot be stored.

    Encoding here, per write, means a document that cannot be encoded fails alone instead
    of failing the batch it would have joined, and the size budget is checked on the bytes
    that are sent.
    """
    with translate_errors(f"store saga {doc.get('_id')!r}"):
        raw = bson.encode(doc)
    if len(raw) > max_bytes:
        raise UnstorableData(
            f"saga {doc.get('_id')!r} would take {len(raw)} bytes, over its budget of "
            f"{max_bytes} bytes (SAGA_MAX_SAGA_BYTES)"
        )
    return RawBSONDocument(raw)


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
        self._definitions_coll: AsyncCollection[Document] = db["definitions"]
        self._sagas: AsyncCollection[Document] = db["sagas"]
        self._definitions: dict[tuple[str, int], StoredDefinition] = {}
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
            await self._sagas.create_indexes(
                [
                    IndexModel(
                        [("definition", ASCENDING), ("key", ASCENDING)],
                        name="definition_key_unique",
                        unique=True,
                        partialFilterExpression={"key": {"$type": "string"}},
                    ),
                    IndexModel([("wake_at", ASCENDING)], name="wake_at"),
                    IndexModel(
                        [("updated_at", ASCENDING)],
                        name="unpublished",
                        partialFilterExpression={"outbox.0": {"$exists": True}},
                    ),
                ]
            )
            existing = [index["name"] async for index in await self._sagas.list_indexes()]
            for name in _RETIRED_INDEXES:
                if name in existing:
                    await self._sagas.drop_index(name)
            await self._definitions_coll.create_index(
                [("name", ASCENDING), ("version", ASCENDING)], name="name_version", unique=True
            )

    async def ping(self) -> None:
        with translate_errors("answer a ping"):
            await self._db.command("ping")

    # -- definitions ------------------------------------------------------------------
    def _remember(self, doc: Document) -> StoredDefinition:
        key = (doc["name"], doc["version"])
        cached = self._definitions.get(key)
        if cached is None:
            cached = StoredDefinition(
                definition=SagaDefinition.model_validate(doc["definition"]),
                source=doc["source"],
                content_hash=doc["content_hash"],
                registered_at=doc["registered_at"],
            )
            self._definitions[key] = cached
        return cached

    async def register_definition(
        self, definition: SagaDefinition, source: str
    ) -> Literal["created", "identical"]:
        content_hash = definition_hash(definition)
        existing = self._definitions.get((definition.name, definition.version))
        if existing is None:
            doc: Document = {
                "_id": f"{definition.name}@{definition.version}",
                "name": definition.name,
                "version": definition.version,
                "content_hash": content_hash,
                "source": source,
                "definition": definition.model_dump(mode="json"),
                "registered_at": stored_datetime(datetime.now(UTC)),
            }
            with translate_errors("register a definition"):
                try:
                    await self._definitions_coll.insert_one(doc)
                except DuplicateKeyError:
                    found = await self._definitions_coll.find_one({"_id": doc["_id"]})
                    if found is None:  # pragma: no cover - definitions are never deleted
                        raise
                    existing = self._remember(found)
                else:
                    self._remember(doc)
                    return "created"
        if existing.content_hash != content_hash:
            raise DefinitionConflict(definition.name, definition.version)
        return "identical"

    async def get_definition(
        self, name: str, version: int | None = None
    ) -> StoredDefinition | None:
        if version is not None and (cached := self._definitions.get((name, version))):
            return cached
        query: Document = {"name": name} if version is None else {"_id": f"{name}@{version}"}
        with translate_errors("read a definition"):
            doc = await self._definitions_coll.find_one(query, sort=[("version", DESCENDING)])
        return None if doc is None else self._remember(doc)

    async def latest_definitions(self) -> list[StoredDefinition]:
        pipeline: list[Document] = [
            {"$sort": {"name": 1, "version": -1}},
            {"$group": {"_id": "$name", "doc": {"$first": "$$ROOT"}}},
            {"$replaceRoot": {"newRoot": "$doc"}},
            {"$sort": {"name": 1}},
        ]
        with translate_errors("list the definitions"):
            cursor = await self._definitions_coll.aggregate(pipeline)
            return [self._remember(doc) async for doc in cursor]

    async def definition_versions(self, name: str) -> list[StoredDefinition]:
        with translate_errors("list a definition's versions"):
            cursor = self._definitions_coll.find({"name": name}).sort("version", ASCENDING)
            return [self._remember(doc) async for doc in cursor]

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
                        {"definition": state.definition, "key": state.key}
                    )
                if existing is None:
                    existing = await self._sagas.find_one({"_id": state.id})
                if existing is None:  # pragma: no cover - sagas are never deleted
                    raise StoreUnavailable(f"saga {state.id!r}: duplicate key, yet no holder")
                raise DuplicateSaga(self._state(existing)) from None

    async def find_saga(self, definition: str, key: str) -> SagaState | None:
        """The instance of ``definition`` for business key ``key``, if any."""
        with translate_errors("find a saga"):
            doc = await self._sagas.find_one({"definition": definition, "key": key})
        return None if doc is None else self._state(doc)

    async def drop_database(self) -> None:
        """Drop the whole database: for throw-away databases (the demo's, tests')."""
        with translate_errors("drop the database"):
            await self._client.drop_database(self._db.name)

    async def load_saga(self, saga_id: str) -> SagaState | None:
        with translate_errors("load a saga"):
            doc = await self._sagas.find_one({"_id": saga_id})
        return None if doc is None else self._state(doc)

    async def save_saga(self, state: SagaState, expected_revision: int) -> bool:
        return await self._writes.submit(_Write.of(state, expected_revision, self._max_saga_bytes))

    async def _write_batch(self, batch: Sequence[_Write]) -> list[bool | BaseException]:
        """One unordered bulk write; per write: inserted / replaced (True) or not (False)."""
        requests: list[InsertOne[Any] | ReplaceOne[Any]] = [
            InsertOne(write.raw)
            if write.expected is None
            else ReplaceOne({"_id": write.saga_id, "revision": write.expected}, write.raw)
            for write in batch
        ]
        details: Mapping[str, Any]
        try:
            details = (await self._sagas.bulk_write(requests, ordered=False)).bulk_api_result
        except BulkWriteError as exc:
            details = exc.details
        except _DRIVER_ERRORS as exc:
            if len(batch) > 1 and not isinstance(exc, ConnectionFailure):
                return await self._write_one_by_one(batch)
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
        replaced = [
            index
            for index, write in enumerate(batch)
            if write.expected is not None and outcomes[index] is True
        ]
        matched = details.get("nMatched", 0)
        if matched == 0 or len(replaced) == 1:  # the count alone tells
            for index in replaced:
                outcomes[index] = matched > 0
        elif matched < len(replaced):
            await self._settle_by_token(batch, replaced, outcomes)
        return outcomes

    async def _write_one_by_one(self, batch: Sequence[_Write]) -> list[bool | BaseException]:
        """After a batch failed as a whole: each write alone, so only a faulty one fails.

        Part of the batch may have landed before the failure; a write that now finds its
        own token in place (a duplicate insert, an unmatched replace) had landed then.
        """
        outcomes: list[bool | BaseException] = []
        for write in batch:
            try:
                outcomes.extend(await self._write_batch([write]))
            except AdapterError as exc:
                outcomes.append(exc)
        lost = [index for index, outcome in enumerate(outcomes) if outcome is False]
        if lost:
            await self._settle_by_token(batch, lost, outcomes)
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
        due_filter = {"wake_at": {"$lte": now}}
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
        query = {"outbox.0": {"$exists": True}, "updated_at": {"$lt": older_than}}
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
