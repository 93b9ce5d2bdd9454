"""GroupCommit: concurrent submits share flushes; every caller gets its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from schemas.batching import GroupCommit, one_by_one


class Recorder:
    """A flush that records its batches and waits for ``gate`` before answering."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def flush(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.gate.wait()
        return [ValueError(f"odd {item}") if item % 2 else item * 10 for item in items]


async def test_a_lone_submit_is_flushed_at_once() -> None:
    recorder = Recorder()
    commit: GroupCommit[int, int] = GroupCommit(recorder.flush)
    assert await commit.submit(2) == 20
    assert recorder.batches == [[2]]


async def test_submits_during_a_flush_leave_together_in_the_next() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    commit: GroupCommit[int, int] = GroupCommit(recorder.flush)
    first = asyncio.ensure_future(commit.submit(0))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(commit.submit(item)) for item in (2, 4, 6)]
    await asyncio.sleep(0)
    assert recorder.batches == [[0]]
    recorder.gate.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [20, 40, 60]
    assert recorder.batches == [[0], [2, 4, 6]]
    assert commit.batches == 2


async def test_each_caller_sees_only_its_own_failure() -> None:
    recorder = Recorder()
    commit: GroupCommit[int, int] = GroupCommit(recorder.flush)
    outcomes = await asyncio.gather(
        *(commit.submit(item) for item in range(4)), return_exceptions=True
    )
    assert outcomes[0] == 0 and outcomes[2] == 20
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "odd 1"
    assert isinstance(outcomes[3], ValueError) and str(outcomes[3]) == "odd 3"


async def test_a_failing_flush_fails_its_whole_batch_only() -> None:
    calls = 0

    async def flush(items: Sequence[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("down")
        return list(items)

    commit: GroupCommit[int, int] = GroupCommit(flush)
    first = asyncio.ensure_future(commit.submit(1))
    await asyncio.sleep(0)
    second = [asyncio.ensure_future(commit.submit(item)) for item in (2, 3)]
    assert await first == 1
    outcomes = await asyncio.gather(*second, return_exceptions=True)
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    assert await commit.submit(4) == 4  # the next batch goes on


async def test_batches_are_capped_and_flushes_run_side_by_side() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    commit: GroupCommit[int, int] = GroupCommit(recorder.flush, max_batch=2, max_in_flight=2)
    futures = [asyncio.ensure_future(commit.submit(item * 2)) for item in range(6)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.batches == [[0], [2]]  # two in flight at once; the others wait
    recorder.gate.set()
    assert await asyncio.gather(*futures) == [0, 20, 40, 60, 80, 100]
    assert recorder.batches == [[0], [2], [4, 6], [8, 10]]


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    commit: GroupCommit[int, int] = GroupCommit(recorder.flush)
    futures = [asyncio.ensure_future(commit.submit(item)) for item in (0, 2)]
    await asyncio.sleep(0)
    futures[0].cancel()
    recorder.gate.set()
    assert await futures[1] == 20
    with pytest.raises(asyncio.CancelledError):
        await futures[0]


async def test_drain_waits_for_the_flushes_in_flight() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    commit: GroupCommit[int, int] = GroupCommit(recorder.flush)
    future = asyncio.ensure_future(commit.submit(2))
    await asyncio.sleep(0)
    drained = asyncio.ensure_future(commit.drain())
    await asyncio.sleep(0)
    assert not drained.done()
    recorder.gate.set()
    await drained
    assert future.done() and future.result() == 20


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupCommit(Recorder().flush, max_batch=0)


async def test_one_by_one_writes_each_item_alone_and_settles_only_the_lost() -> None:
    written: list[list[int]] = []
    settled: list[list[int]] = []

    async def write(items: Sequence[int]) -> list[bool | BaseException]:
        written.append(list(items))
        [item] = items
        if item == 3:
            raise ValueError("three")
        if item == 4:
            raise KeyError("four")
        return [item % 2 == 0]

    async def settle(
        items: Sequence[int], indexes: list[int], outcomes: list[bool | BaseException]
    ) -> None:
        settled.append(indexes)
        for index in indexes:
            outcomes[index] = items[index] == 5  # 5 is found stored, 1 is not

    batch = [1, 2, 3, 5]
    outcomes = await one_by_one(batch, write, settle, errors=ValueError)
    assert written == [[1], [2], [3], [5]]
    assert settled == [[0, 3]]
    assert outcomes[:2] == [False, True] and outcomes[3] is True
    assert isinstance(outcomes[2], ValueError)
    with pytest.raises(KeyError):  # not one of ``errors``: the whole fallback fails
        await one_by_one([4], write, settle, errors=ValueError)


async def test_one_by_one_settles_nothing_when_every_item_lands() -> None:
    async def write(items: Sequence[int]) -> list[bool | BaseException]:
        return [True]

    async def settle(*_: object) -> None:
        raise AssertionError("nothing was lost")

    assert await one_by_one([1, 2], write, settle) == [True, True]
