"""The idempotency record of every command a participant handled, in MongoDB.

Theory of operation. One document per idempotency key (``_id``), with the participant's
name. A handler runs only after its caller *claims* the key: it inserts an ``in_progress``
document carrying a random ``owner`` token and a ``lease_until`` instant, stamped with the
database's clock when the insert lands (``$$NOW`` in an upsert's pipeline), and the lease is
renewed the same way, from the moment the claim is sent until its outcome is stored
(``_lease.LeaseKeeper``). The unique ``_id`` makes the insert the arbiter between
concurrent duplicates. A claimant that crashes stops renewing; once its lease and a margin
(half the lease) have passed on the database's clock (``expired``: ``hello``'s
``localTime``, never this process's clock), another delivery may take the key over
(``take_over``: a conditional update on the owner and ``lease_until`` it read, so a renewal
landing meanwhile wins).

The claimant then either *finishes* the claim with a final outcome (``succeeded``, or a
non-retryable ``failed``) that every later duplicate gets replied again, or *releases* it
(a retryable failure), so that the next attempt runs the handler again.

Claims and final outcomes are group-committed (``_writes.RecordWrites``): the writes of
concurrent commands leave together as one bulk write, each keeping its own outcome. Why a
claim and its outcome cannot be one write, even for a handler that finishes at once, is
told there.

Retention. A final record (finished, or a tombstone) carries ``expires_at`` = the instant
it became final + the retention (``record_retention``, default 7 days), and a sparse TTL
index ``{expires_at: 1}`` with ``expireAfterSeconds: 0`` (``ensure_indexes``, called when
the participant starts) lets MongoDB delete it after that instant (mongod's TTL monitor
runs every 60 s, so a record lives *at least* the retention, a little longer in practice).
An in-progress claim never carries the field — ``claim`` inserts without it, and
``finish`` sets it in the same update that makes the record final — so TTL never deletes a
claim: its lease alone decides when another delivery may take it over. With
``retention=None`` no record gets the field and records are kept forever (the behaviour
before retention existed). The index itself never depends on the retention, so changing
the retention between runs never conflicts with the index an earlier run made; records
finished under an earlier retention keep their ``expires_at``.

Outages. A handler that has run must not lose its outcome: ``finish`` retries through
connection failures for minutes, not for the lease, holding the command unacknowledged
meanwhile, and the lease keeper goes on renewing. Nobody can take the key over while
MongoDB is unreachable, and the first writes that reach it again are usually this retry
and a renewal; a duplicate in the same process never takes over (it waits for the
delivery ahead of it). What remains: an outage longer than the lease and its margin during
which the coordinator sends the step's next attempt to *another* process, whose delivery
reads the expired claim, the database's clock, and takes the claim over before the retry
or a renewal lands, runs the handler a second time.

What expiry gives up, once a key's record is gone:

* a duplicate of the command (same idempotency key) runs the handler again instead of
  getting the stored reply;
* a compensation whose action record is gone finds "no action" and answers ``succeeded``
  without calling the compensation handler, so the action's effect is not undone;
* a tombstone is gone, so a late copy of the compensated action would be performed.

Why 7 days is safe enough: every copy of a command that reaches a participant during a
saga's life arrives within that saga's timeouts, which are minutes to hours, not days. The
coordinator sends a step's next attempt, and later its compensation, only within the
steps' timeouts, retry backoffs and the saga's deadline (all durable timers); the outbox
relay re-publishes an attempt seconds after a crash; the broker redelivers an
unacknowledged command after a lost connection or a nack, and dead-letters it after its
delivery limit. A tombstone only has to outlive the action attempts already published when
the compensation ran (the coordinator sends no new action attempt for a step it
compensates): a queue backlog, not days. What 7 days does not cover: an operator ``retry``
of a saga left ``failed`` longer than the retention (the resent command's record, or the
action record its compensation looks up, may be gone: the action runs again, the
compensation finds nothing to undo); a coordinator down for longer; a definition without a
deadline whose retry policies add up to more than the retention. Choose a retention longer
than the longest of these, or ``None``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pymongo import ASCENDING, AsyncMongoClient, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure

from participants._writes import RecordWrites
from schemas.codec import BadMessage, parse_idempotency_key
from schemas.envelope import idempotency_key

__all__ = ["DEFAULT_RECORD_RETENTION", "Claim", "OutcomeStore", "Record", "new_owner"]

#: How long a final record is kept by default (see "Retention" above).
DEFAULT_RECORD_RETENTION = timedelta(days=7)

#: How long ``finish`` keeps retrying through connection failures (see ``finish``).
FINISH_PATIENCE = timedelta(minutes=2)

#: How long past its lease, as a share of the lease, a claim must be before it is taken over.
TAKEOVER_MARGIN = 0.5

#: The field of a final record's expiry, and its TTL index (never changes: see above).
EXPIRES_AT = "expires_at"

logger = logging.getLogger("participants")


def checked_retention(retention: timedelta | None) -> timedelta | None:
    """``retention`` if it is longer than zero or ``None`` (forever); else ``ValueError``."""
    if retention is not None and retention <= timedelta(0):
        raise ValueError(
            f"the record retention must be longer than zero (None keeps records forever), "
            f"not {retention}"
        )
    return retention


Status = Literal["in_progress", "succeeded", "failed"]


@dataclass(frozen=True, slots=True)
class Record:
    """One stored idempotency record."""

    key: str
    status: Status
    reply: dict[str, Any] | None
    lease_until: datetime | None
    owner: str | None = None

    @property
    def final(self) -> bool:
        """Whether the outcome is final (replied again to every duplicate)."""
        return self.status != "in_progress"


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to run the handler for one key, until the lease passes."""

    key: str
    owner: str


def _now() -> datetime:
    return datetime.now(UTC)


def _record(doc: dict[str, Any]) -> Record:
    lease_until = doc.get("lease_until")
    if isinstance(lease_until, datetime) and lease_until.tzinfo is None:
        lease_until = lease_until.replace(tzinfo=UTC)
    return Record(
        key=str(doc["_id"]),
        status=doc.get("status", "in_progress"),
        reply=doc.get("reply"),
        lease_until=lease_until,
        owner=doc.get("owner"),
    )


def new_owner() -> str:
    """A fresh claimant token."""
    return uuid.uuid4().hex


class OutcomeStore:
    """Idempotency records in ``<database>.<collection>``.

    Args:
        client: A pymongo async client (created with ``tz_aware=True``).
        database: The database name.
        participant: The participant's name, stored on each record.
        collection: The collection name.
        lease: How long a claim holds without renewal.
        retention: How long a final record is kept; ``None`` keeps it forever.
    """

    def __init__(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        database: str,
        participant: str,
        *,
        collection: str = "participant_outcomes",
        lease: timedelta = timedelta(seconds=30),
        retention: timedelta | None = DEFAULT_RECORD_RETENTION,
    ) -> None:
        # Journaled writes: a record the database acknowledged survives its crash, so a
        # handler never runs twice because its outcome was silently lost.
        concern = WriteConcern(**{**client.write_concern.document, "j": True})
        self._collection: AsyncCollection[dict[str, Any]] = client[database].get_collection(
            collection, write_concern=concern
        )
        self._writes = RecordWrites(self._collection)
        self.participant = participant
        self.lease = lease
        self.margin = lease * TAKEOVER_MARGIN
        self.retention = checked_retention(retention)

    async def ensure_indexes(self) -> None:
        """Create the TTL index that deletes final records after their ``expires_at``.

        Idempotent, and the same whatever the retention, so it never conflicts with the
        index of an earlier run. When the server refuses it — an index on the field made by
        hand with other options or another name (IndexOptionsConflict,
        IndexKeySpecsConflict), no privilege to create indexes — the start goes on with a
        warning: the records stay correct, they only expire as an existing index says, if
        at all (the behaviour before retention existed).
        """
        try:
            await self._collection.create_index(
                [(EXPIRES_AT, ASCENDING)], expireAfterSeconds=0, sparse=True
            )
        except OperationFailure as exc:
            logger.warning(
                "[%s] could not create the TTL index {%s: 1} (expireAfterSeconds 0) on %s: "
                "%s; final idempotency records expire only as an existing index says",
                self.participant,
                EXPIRES_AT,
                self._collection.full_name,
                (exc.details or {}).get("errmsg", str(exc)),
            )

    def _expiry(self, now: datetime) -> dict[str, datetime]:
        """The ``expires_at`` field of a record made final at ``now`` (none: kept forever)."""
        if self.retention is None:
            return {}
        try:
            return {EXPIRES_AT: now + self.retention}
        except OverflowError:  # past year 9999: as good as forever
            return {}

    async def get(self, key: str) -> Record | None:
        """The record of ``key``, if any."""
        doc = await self._collection.find_one({"_id": key})
        return None if doc is None else _record(doc)

    async def action_records(self, saga_id: str, step: str) -> list[Record]:
        """The records of a step's action under every key it had: ``<saga>:<step>:action``
        and, after operator retries, ``…:r<n>``; in the order of ``n`` (the base key first).

        One range of ``_id`` (every key that starts with the base key), so the look-up
        uses the ``_id`` index; keys that are not the action's are left out.
        """
        base = idempotency_key(saga_id, step, "action")
        cursor = self._collection.find({"_id": {"$gte": base, "$lt": base + ";"}})
        numbered: list[tuple[int, Record]] = []
        async for doc in cursor:
            try:
                number = parse_idempotency_key(str(doc["_id"]), saga_id, step, "action")
            except BadMessage:
                continue
            numbered.append((number, _record(doc)))
        return [record for _, record in sorted(numbered, key=lambda pair: pair[0])]

    async def claim(self, key: str, owner: str | None = None, **fields: Any) -> Claim | None:
        """Claim ``key`` for ``owner``: insert an in-progress record, unless one exists.

        The record's ``lease_until`` is the database's time when the insert lands plus the
        lease (``$$NOW``), not this process's time when it was sent: a slow round trip does
        not shorten the lease, and no clock but the database's is ever compared with it.

        Args:
            key: The idempotency key.
            owner: A fresh token naming this claimant (default: ``new_owner()``).
            **fields: Extra fields stored on the record (saga id, step, command…).

        Returns:
            The claim, or ``None`` when a record of ``key`` exists (final, or in progress:
            see ``expired`` and ``take_over``).
        """
        owner = owner or new_owner()
        literal = {"participant": self.participant, "status": "in_progress", **fields}
        pipeline = [
            {
                "$set": {
                    **{name: {"$literal": value} for name, value in literal.items()},
                    "lease_until": self._lease_end(),
                    "created_at": "$$NOW",
                    "updated_at": "$$NOW",
                }
            }
        ]
        if await self._writes.claim(key, owner, pipeline):  # group-committed
            return Claim(key, owner)
        return None

    def _lease_end(self) -> dict[str, Any]:
        """The expression of a lease that ends ``lease`` after the database's now."""
        return {"$add": ["$$NOW", int(self.lease.total_seconds() * 1000)]}

    async def database_now(self) -> datetime:
        """The database's clock (``hello``'s ``localTime``)."""
        reply = await self._collection.database.client.admin.command("hello")
        now: datetime = reply["localTime"]
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    async def expired(self, record: Record) -> bool:
        """Whether ``record``'s claim went unrenewed for its lease and ``margin`` besides,
        on the database's clock (the clock that stamped its ``lease_until``)."""
        if record.final:
            return False
        if record.lease_until is None:
            return True
        return record.lease_until + self.margin < await self.database_now()

    async def take_over(self, record: Record, owner: str) -> Claim | None:
        """Take over the expired claim ``record`` for ``owner``; ``None`` if it changed.

        The update matches the claim exactly as read (its owner and ``lease_until``), so a
        renewal or a finish that landed since the read wins over the takeover.
        """
        taken = await self._collection.update_one(
            {
                "_id": record.key,
                "status": "in_progress",
                "owner": record.owner,
                "lease_until": record.lease_until,
            },
            [{"$set": {"owner": owner, "lease_until": self._lease_end(), "updated_at": "$$NOW"}}],
        )
        return Claim(record.key, owner) if taken.modified_count == 1 else None

    async def renew(self, claim: Claim) -> bool:
        """Extend the lease of ``claim`` from the database's now; ``False`` if not held."""
        result = await self._collection.update_one(
            {"_id": claim.key, "owner": claim.owner, "status": "in_progress"},
            [{"$set": {"lease_until": self._lease_end(), "updated_at": "$$NOW"}}],
        )
        return result.matched_count == 1

    async def finish(self, claim: Claim, status: Status, reply: dict[str, Any]) -> bool:
        """Store the final outcome of ``claim``; ``False`` if the claim was lost.

        The handler has run by now, and giving up would run it again: the message goes back
        to the queue and its next delivery takes the key over once the lease has passed.
        So a connection failure (MongoDB down, restarting, or being re-discovered by the
        driver) is retried every half second at most, for up to ``FINISH_PATIENCE`` (or the
        lease, if longer), and only then raised. While MongoDB is unreachable nobody can
        take the key over; the moment it answers, this retry stores the outcome.
        """
        patience = max(self.lease, FINISH_PATIENCE).total_seconds()
        deadline = time.monotonic() + patience
        delay = 0.1
        while True:
            now = _now()
            final = {
                "status": status,
                "reply": reply,
                "lease_until": None,
                "updated_at": now,
                **self._expiry(now),
            }
            try:  # group-committed with other commands' writes
                return await self._writes.finish(claim.key, claim.owner, {"$set": final})
            except ConnectionFailure:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

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
                    **self._expiry(now),
                }
            )
        except DuplicateKeyError:
            return False
        return True
