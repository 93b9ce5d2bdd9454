"""The idempotency record of every command a participant handled, in MongoDB.

Theory of operation. One document per idempotency key (``_id``), with the participant's
name. A handler runs only after its caller *claims* the key: it inserts an ``in_progress``
document carrying a random ``owner`` token and a ``lease_until`` instant, and renews the
lease while the handler runs. The unique ``_id`` makes the insert the arbiter between
concurrent duplicates. A claimant that crashes stops renewing, and once its lease has
passed another delivery may take the key over (a conditional update on the expired lease).

The claimant then either *finishes* the claim with a final outcome (``succeeded``, or a
non-retryable ``failed``) that every later duplicate gets replied again, or *releases* it
(a retryable failure), so that the next attempt runs the handler again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, DuplicateKeyError

__all__ = ["Claim", "OutcomeStore", "Record"]

Status = Literal["in_progress", "succeeded", "failed"]


@dataclass(frozen=True, slots=True)
class Record:
    """One stored idempotency record."""

    key: str
    status: Status
    reply: dict[str, Any] | None
    lease_until: datetime | None

    @property
    def final(self) -> bool:
        """Whether the outcome is final (replied again to every duplicate)."""
        return self.status != "in_progress"

    def live(self, now: datetime) -> bool:
        """Whether an in-progress claim still holds its lease at ``now``."""
        return self.status == "in_progress" and (
            self.lease_until is not None and self.lease_until > now
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to run the handler for one key, until the lease passes."""

    key: str
    owner: str


def _now() -> datetime:
    return datetime.now(UTC)


class OutcomeStore:
    """Idempotency records in ``<database>.<collection>``.

    Args:
        client: A pymongo async client (created with ``tz_aware=True``).
        database: The database name.
        participant: The participant's name, stored on each record.
        collection: The collection name.
        lease: How long a claim holds without renewal.
    """

    def __init__(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        database: str,
        participant: str,
        *,
        collection: str = "participant_outcomes",
        lease: timedelta = timedelta(seconds=30),
    ) -> None:
        # Journaled writes: a record the database acknowledged survives its crash, so a
        # handler never runs twice because its outcome was silently lost.
        concern = WriteConcern(**{**client.write_concern.document, "j": True})
        self._collection: AsyncCollection[dict[str, Any]] = client[database].get_collection(
            collection, write_concern=concern
        )
        self.participant = participant
        self.lease = lease

    async def get(self, key: str) -> Record | None:
        """The record of ``key``, if any."""
        doc = await self._collection.find_one({"_id": key})
        if doc is None:
            return None
        lease_until = doc.get("lease_until")
        if isinstance(lease_until, datetime) and lease_until.tzinfo is None:
            lease_until = lease_until.replace(tzinfo=UTC)
        return Record(
            key=key,
            status=doc.get("status", "in_progress"),
            reply=doc.get("reply"),
            lease_until=lease_until,
        )

    async def claim(self, key: str, **fields: Any) -> Claim | None:
        """Claim ``key``: insert an in-progress record, or take over an expired one.

        Args:
            key: The idempotency key.
            **fields: Extra fields stored on the record (saga id, step, command…).

        Returns:
            The claim, or ``None`` when another record holds the key (final, or in
            progress under a live lease).
        """
        now = _now()
        owner = uuid.uuid4().hex
        doc = {
            "_id": key,
            "participant": self.participant,
            "status": "in_progress",
            "owner": owner,
            "lease_until": now + self.lease,
            "created_at": now,
            "updated_at": now,
            **fields,
        }
        try:
            await self._collection.insert_one(doc)
            return Claim(key, owner)
        except DuplicateKeyError:
            pass
        taken = await self._collection.update_one(
            {"_id": key, "status": "in_progress", "lease_until": {"$lt": now}},
            {"$set": {"owner": owner, "lease_until": now + self.lease, "updated_at": now}},
        )
        return Claim(key, owner) if taken.modified_count == 1 else None

    async def renew(self, claim: Claim) -> bool:
        """Extend the lease of ``claim``; ``False`` if the claim was lost."""
        now = _now()
        result = await self._collection.update_one(
            {"_id": claim.key, "owner": claim.owner, "status": "in_progress"},
            {"$set": {"lease_until": now + self.lease, "updated_at": now}},
        )
        return result.matched_count == 1

    async def finish(self, claim: Claim, status: Status, reply: dict[str, Any]) -> bool:
        """Store the final outcome of ``claim``; ``False`` if the claim was lost.

        The handler has run by now, so losing its outcome would run it again on the next
        delivery: a connection failure is retried for up to the lease, then raised.
        """
        deadline = time.monotonic() + self.lease.total_seconds()
        delay = 0.1
        while True:
            try:
                result = await self._collection.update_one(
                    {"_id": claim.key, "owner": claim.owner, "status": "in_progress"},
                    {
                        "$set": {
                            "status": status,
                            "reply": reply,
                            "lease_until": None,
                            "updated_at": _now(),
                        }
                    },
                )
            except ConnectionFailure:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            return result.matched_count == 1

    async def release(self, claim: Claim) -> None:
        """Give ``claim`` up without a final outcome (the next attempt runs again)."""
        await self._collection.delete_one(
            {"_id": claim.key, "owner": claim.owner, "status": "in_progress"}
        )

    async def tombstone(self, key: str, reply: dict[str, Any], **fields: Any) -> bool:
        """Store a final outcome for a key nobody claimed; ``False`` if it exists already.

        A compensation that finds no action uses this on the action's key, so that a late
        action command is refused instead of leaving an effect nothing will undo.
        """
        now = _now()
        try:
            await self._collection.insert_one(
                {
                    "_id": key,
                    "participant": self.participant,
                    "status": "failed",
                    "reply": reply,
                    "lease_until": None,
                    "created_at": now,
                    "updated_at": now,
                    **fields,
                }
            )
        except DuplicateKeyError:
            return False
        return True
