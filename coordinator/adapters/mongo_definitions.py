"""The ``definitions`` collection: immutable definitions by (name, version).

One document per (name, version), with ``_id = "{name}@{version}"`` and the sha256 of the
definition's canonical JSON, so a second registration is either identical or a conflict.
Because definitions never change, every one read is cached by (name, version); only the
``retired`` flag (``POST /v1/definitions/{name}/retire``) is set later, on every version
of a name, and read afresh with each listing.

A stored document must always load, and one that does not (say, a rule added to the
definition language after it was registered) must never stop the others: the listings skip
it (logged once), and reading it alone raises ``DefinitionUnloadable`` with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from coordinator.adapters.mongo_errors import translate_errors
from coordinator.errors import DefinitionConflict, DefinitionUnloadable
from coordinator.ports import StoredDefinition
from schemas.definition import SagaDefinition

__all__ = ["MongoDefinitions", "definition_hash"]

log = logging.getLogger(__name__)

Document = dict[str, Any]


def definition_hash(definition: SagaDefinition) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the definition."""
    canonical = json.dumps(
        definition.model_dump(mode="json"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _load(doc: Document) -> StoredDefinition:
    """The stored definition; ``DefinitionUnloadable`` when it no longer validates."""
    name, version = str(doc.get("name")), doc.get("version")
    try:
        definition = SagaDefinition.model_validate(doc["definition"])
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
        problem = " ".join(str(exc).split())[:2000]
        raise DefinitionUnloadable(name, int(version or 0), problem) from exc
    return StoredDefinition(
        definition=definition,
        source=doc["source"],
        content_hash=doc["content_hash"],
        registered_at=doc["registered_at"],
        retired=bool(doc.get("retired", False)),
    )


class MongoDefinitions:
    """Registers, reads, lists and retires definitions; ``MongoSagaStore`` delegates here."""

    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._coll = collection
        self._cache: dict[tuple[str, int], StoredDefinition] = {}
        self._unloadable: set[str] = set()
        """Ids of documents that failed to load (each logged once)."""
        self._awaiting: dict[str, StoredDefinition | None] = {}
        """By document id: the version if it has an ``await`` step, else None (it loads
        no more once known: definitions never change)."""

    async def ensure_indexes(self) -> None:
        await self._coll.create_index(
            [("name", ASCENDING), ("version", ASCENDING)], name="name_version", unique=True
        )

    def _remember(self, doc: Document) -> StoredDefinition:
        key = (doc["name"], doc["version"])
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = _load(doc)
        elif cached.retired != bool(doc.get("retired", False)):
            cached = self._cache[key] = dataclasses.replace(cached, retired=not cached.retired)
        return cached

    def _loaded(self, docs: list[Document]) -> list[StoredDefinition]:
        """The documents that load; the others are skipped, each logged once."""
        loaded = []
        for doc in docs:
            try:
                loaded.append(self._remember(doc))
            except DefinitionUnloadable as exc:
                if doc["_id"] not in self._unloadable:
                    self._unloadable.add(doc["_id"])
                    log.error("definition skipped: %s", exc)
        return loaded

    @property
    def unloadable(self) -> int:
        """How many stored documents failed to load so far."""
        return len(self._unloadable)

    async def register(
        self, definition: SagaDefinition, source: str
    ) -> Literal["created", "identical"]:
        content_hash = definition_hash(definition)
        cached = self._cache.get((definition.name, definition.version))
        stored_hash = cached.content_hash if cached is not None else None
        if cached is None:
            doc: Document = {
                "_id": f"{definition.name}@{definition.version}",
                "name": definition.name,
                "version": definition.version,
                "content_hash": content_hash,
                "source": source,
                "definition": definition.model_dump(mode="json"),
                "registered_at": _stored_now(),
            }
            with translate_errors("register a definition"):
                try:
                    await self._coll.insert_one(doc)
                except DuplicateKeyError:
                    found = await self._coll.find_one({"_id": doc["_id"]})
                    if found is None:  # pragma: no cover - definitions are never deleted
                        raise
                    stored_hash = found.get("content_hash")
                else:
                    self._remember(doc)
                    return "created"
        if stored_hash != content_hash:
            raise DefinitionConflict(definition.name, definition.version)
        return "identical"

    async def get(self, name: str, version: int | None = None) -> StoredDefinition | None:
        if version is not None and (cached := self._cache.get((name, version))):
            return cached
        query: Document = {"name": name} if version is None else {"_id": f"{name}@{version}"}
        with translate_errors("read a definition"):
            doc = await self._coll.find_one(query, sort=[("version", DESCENDING)])
        return None if doc is None else self._remember(doc)

    async def latest(self) -> list[StoredDefinition]:
        pipeline: list[Document] = [
            {"$sort": {"name": 1, "version": -1}},
            {"$group": {"_id": "$name", "doc": {"$first": "$$ROOT"}}},
            {"$replaceRoot": {"newRoot": "$doc"}},
            {"$sort": {"name": 1}},
        ]
        with translate_errors("list the definitions"):
            cursor = await self._coll.aggregate(pipeline)
            docs = await cursor.to_list()
        return self._loaded(docs)

    async def versions(self, name: str) -> list[StoredDefinition]:
        with translate_errors("list a definition's versions"):
            docs = await self._coll.find({"name": name}).sort("version", ASCENDING).to_list()
        return self._loaded(docs)

    async def retire(self, name: str) -> bool:
        with translate_errors("retire a definition"):
            result = await self._coll.update_many({"name": name}, {"$set": {"retired": True}})
        for key, cached in list(self._cache.items()):
            if key[0] == name:
                self._cache[key] = dataclasses.replace(cached, retired=True)
        return result.matched_count > 0

    async def awaiting(self) -> list[StoredDefinition]:
        """Every stored version (retired ones too) with an ``await`` step that loads.

        One listing of ids per call; only the versions not seen before are read in full.
        """
        with translate_errors("list the definitions' ids"):
            ids = [doc["_id"] for doc in await self._coll.find({}, {"_id": 1}).to_list()]
        unseen = [doc_id for doc_id in ids if doc_id not in self._awaiting]
        if unseen:
            with translate_errors("read definitions"):
                docs = await self._coll.find({"_id": {"$in": unseen}}).to_list()
            for doc in docs:
                loaded = self._loaded([doc])
                if loaded and loaded[0].definition.awaited_events:
                    self._awaiting[doc["_id"]] = loaded[0]
                elif loaded:
                    self._awaiting[doc["_id"]] = None
        return [
            self._cache.get((stored.definition.name, stored.definition.version), stored)
            for doc_id in ids
            if (stored := self._awaiting.get(doc_id)) is not None
        ]

    async def trigger_events(self) -> set[str]:
        with translate_errors("list the trigger events"):
            cursor = self._coll.find(
                {"definition.trigger.event": {"$type": "string"}},
                {"definition.trigger.event": 1},
            )
            docs = await cursor.to_list()
        return {str(doc["definition"]["trigger"]["event"]) for doc in docs}


def _stored_now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
