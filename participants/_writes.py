"""The idempotency records' claims and final writes, group-committed.

Every command costs a participant two writes: the claim (an insert) before its handler
runs, and the final outcome (a conditional update) after. Concurrent commands' writes
leave together as one unordered ``bulk_write`` (``schemas.batching.GroupCommit``): the
first write of a quiet participant leaves at once, and under load one round trip carries
the claims and outcomes of every command that arrived meanwhile, so the database pays its
per-command overhead once per batch.

Each write keeps its own outcome, as if it had been sent alone:

* a claim: ``True`` inserted, ``False`` when the key exists (duplicate key, per write);
* a final write: ``True`` when it matched the claim still in progress under its owner. The
  batch's matched count is one figure; when it falls short of the number of final writes,
  one read of the records tells which matched: a record that carries the write's owner and
  is no longer in progress was made final by that write (nobody else writes a claim's
  owner token, and nothing changes a final record);
* a write the server refuses: its error (``WriteError``), for its caller alone.

A batch that fails as a whole for a reason other than the connection (the encoder refusing
one write's document) is sent again one write at a time, so that only the faulty write
fails: a handler whose outcome was fine must not lose it for another's. A connection
failure fails every write of the batch; their callers retry (``OutcomeStore.finish``) or
give the command back, exactly as with writes sent one by one.

Why the claim and the outcome stay two writes, even for a handler that finishes in
microseconds: the claim is the arbiter between copies of a command (a redelivery after a
lost connection, a relayed resend, the compensation racing its action). It must be
acknowledged before the handler starts, or two copies could both run it, and a
compensation arriving meanwhile would find no record, store its tombstone and answer
"nothing to undo" while the action goes on to take effect. The outcome only exists after
the handler has run, so it cannot ride the claim's write; a handler's effects live outside
this database, so no single write can make "ran" and "recorded" one atomic step. What can
be shared is the round trip: the claim and the outcome each travel in a batch with other
commands' writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    PyMongoError,
    WriteConcernError,
    WriteError,
)

from schemas.batching import GroupCommit, one_by_one

__all__ = ["RecordWrites"]

_DUPLICATE_KEY = 11000

Document = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Write:
    """A claim (``upsert``: inserted unless the key exists) or a final write, by ``owner``."""

    key: str
    owner: str
    update: Document | list[Document]
    upsert: bool = False

    def request(self) -> UpdateOne:
        if self.upsert:  # matches nothing but its own record: a fresh owner token
            return UpdateOne({"_id": self.key, "owner": self.owner}, self.update, upsert=True)
        return UpdateOne(
            {"_id": self.key, "owner": self.owner, "status": "in_progress"}, self.update
        )


class RecordWrites:
    """Claims and final writes of one records collection, group-committed."""

    def __init__(self, collection: AsyncCollection[Document], *, max_batch: int = 256) -> None:
        self._collection = collection
        self._writes: GroupCommit[_Write, bool] = GroupCommit(self._flush, max_batch=max_batch)

    @property
    def batches(self) -> int:
        """Bulk writes sent so far (for tests and figures)."""
        return self._writes.batches

    async def claim(self, key: str, owner: str, pipeline: list[Document]) -> bool:
        """Insert ``key``'s claim, made by ``pipeline``; ``False`` when its record exists.

        An upsert whose filter names ``owner`` (a fresh token, on no record yet): the insert
        runs the update pipeline, so the claim's times come from the database's clock. When
        the key exists, the upsert's insert fails on the unique ``_id`` (duplicate key).
        """
        return await self._writes.submit(_Write(key, owner, pipeline, upsert=True))

    async def finish(self, key: str, owner: str, update: Document) -> bool:
        """Apply ``update`` to ``key``'s claim if ``owner`` still holds it in progress."""
        return await self._writes.submit(_Write(key, owner, update))

    async def _flush(self, batch: Sequence[_Write]) -> list[bool | BaseException]:
        details: Mapping[str, Any]
        try:
            result = await self._collection.bulk_write(
                [write.request() for write in batch], ordered=False
            )
            details = result.bulk_api_result
        except BulkWriteError as exc:
            details = exc.details
        except (PyMongoError, ValueError, TypeError, OverflowError) as exc:
            if len(batch) > 1 and not isinstance(exc, ConnectionFailure):
                # Part of the batch may have landed: a write that now finds its own owner
                # token in place (a duplicate claim, an unmatched final write) had landed.
                return await one_by_one(batch, self._flush, self._settle)
            raise
        outcomes: list[bool | BaseException] = [True] * len(batch)
        for error in details.get("writeErrors", []):
            index, code = error["index"], error.get("code")
            if batch[index].upsert and code == _DUPLICATE_KEY:
                outcomes[index] = False
            else:
                outcomes[index] = WriteError(error.get("errmsg", ""), code, error)
        if details.get("writeConcernErrors"):
            concern = details["writeConcernErrors"][0]
            raise WriteConcernError(concern.get("errmsg", ""), concern.get("code"), concern)
        finals = [i for i, w in enumerate(batch) if not w.upsert and outcomes[i] is True]
        matched = details.get("nMatched", 0)
        if matched == 0 or len(finals) == 1:  # the count alone tells
            for index in finals:
                outcomes[index] = matched > 0
        elif matched < len(finals):
            await self._settle(batch, finals, outcomes)
        return outcomes

    async def _settle(
        self, batch: Sequence[_Write], indexes: list[int], outcomes: list[bool | BaseException]
    ) -> None:
        """Set ``outcomes[i]``: whether the record shows write ``i`` landed (its owner token,
        and for a final write, no longer in progress)."""
        keys = list({batch[index].key for index in indexes})
        cursor = self._collection.find({"_id": {"$in": keys}}, {"owner": 1, "status": 1})
        records = {doc["_id"]: doc async for doc in cursor}
        for index in indexes:
            write = batch[index]
            record = records.get(write.key) or {}
            if write.upsert:
                outcomes[index] = record.get("owner") == write.owner
            else:
                outcomes[index] = (
                    record.get("owner") == write.owner and record.get("status") != "in_progress"
                )
