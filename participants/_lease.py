"""Keeping a claim's lease while its command is handled, from the claim to the final write.

A claim's lease must hold for as long as the delivery that made it is alive: while the
claim travels to the database, while a compensation looks up its action, while the handler
runs, and while the final outcome travels back. ``LeaseKeeper`` starts before the claim is
sent and stops once the outcome is stored (or the claim released). Every ``lease / 3`` it
sends a renewal, without waiting for the one before to return: when round trips are as
slow as the lease, renewals still land one period apart, each extending the lease from the
database's now. A renewal that lands before the claim (or on a claim this delivery never
got) matches nothing and does no harm.

So a claim expires only when no renewal has landed for the lease and the takeover margin
besides (``OutcomeStore.expired``): its claimant crashed, or has been cut off from the
database that long. Within one process a duplicate never takes a claim over at all: it
waits for the delivery that holds the key (``Executor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from participants._store import Claim, OutcomeStore

__all__ = ["LeaseKeeper"]

#: Renewals in flight at most (a database that does not answer must not pile them up).
MAX_IN_FLIGHT = 3


class LeaseKeeper:
    """Renews ``claim`` every ``lease / 3`` until ``stop``.

    Args:
        store: The records.
        claim: The key and the owner token (the claim need not have landed yet).
        log: Where a lost claim is reported.
    """

    def __init__(
        self, store: OutcomeStore, claim: Claim, log: logging.LoggerAdapter[logging.Logger]
    ) -> None:
        self._store = store
        self._claim = claim
        self._log = log
        self.held = False
        """Whether the claim is known to have landed (a renewal that misses it then means
        it was lost)."""
        self._lost_reported = False
        self._renewals: set[asyncio.Task[None]] = set()
        self._task = asyncio.create_task(self._keep())

    async def _keep(self) -> None:
        period = max(self._store.lease.total_seconds() / 3, 0.05)
        while True:
            await asyncio.sleep(period)
            if len(self._renewals) < MAX_IN_FLIGHT:
                renewal = asyncio.create_task(self._renew())
                self._renewals.add(renewal)
                renewal.add_done_callback(self._renewals.discard)

    async def _renew(self) -> None:
        try:
            renewed = await self._store.renew(self._claim)
        except Exception as exc:
            self._log.warning("could not renew the claim: %r", exc)
            return
        if not renewed and self.held and not self._lost_reported:
            self._lost_reported = True
            self._log.warning("the claim on this key was lost (taken over after its lease)")

    async def stop(self) -> None:
        """Stop renewing (renewals in flight are cancelled)."""
        self._task.cancel()
        for renewal in list(self._renewals):
            renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(self._task, *self._renewals, return_exceptions=True)
