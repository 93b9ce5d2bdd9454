"""The shape of the update a transition is written as, and what the write monitor counts.

Whether the server turns these updates into the right documents is the contract tests'
business (``tests/contract/test_saga_store_updates.py``); here: that each kind of change
takes the small form, and that anything not derived from the base is written whole.
"""

from __future__ import annotations

from coordinator.adapters.mongo_indexes import saga_index_paths
from coordinator.adapters.mongo_updates import saga_update
from coordinator.adapters.monitor import touches
from coordinator.engine.engine import handle
from tests.contract.test_saga_store_updates import DEFINITION, RUNS, ok, repeat, states


def test_a_reply_sets_step_fields_and_pushes_history() -> None:
    base, new = states(RUNS["completes"], 1000)[:2]
    update = saga_update(base, new)
    assert update["$inc"] == {"revision": 1}
    assert set(update["$push"]) == {"history"}
    assert "$slice" not in update["$push"]["history"]
    assert len(update["$push"]["history"]["$each"]) == len(new.history) - len(base.history)
    sets = update["$set"]
    assert "steps" not in sets and "history" not in sets and "input" not in sets
    assert sets["steps.0.status"] == "succeeded"
    assert sets["steps.0.output"] == {"step": "flight", "n": 1}
    assert sets["wake_at"] == new.wake_at


def test_the_history_cap_becomes_a_slice() -> None:
    sequence = states(RUNS["completes"], 3)
    base, new = sequence[1], sequence[2]
    assert new.history_dropped > base.history_dropped
    push = saga_update(base, new)["$push"]["history"]
    assert push["$slice"] == -3


def test_a_counted_repeat_sets_its_entry_in_place() -> None:
    sequence = states(RUNS["repeats are counted in place"], 1000)
    base, new = sequence[1], sequence[2]  # the second repeat counts on the first one
    update = saga_update(base, new)
    assert "$push" not in update
    changed = [path for path in update["$set"] if path.startswith("history")]
    assert len(changed) == 1 and changed[0].startswith("history.")
    assert update["$set"][changed[0]]["detail"]["repeats"] == 2


def test_a_state_not_derived_from_the_base_is_written_whole() -> None:
    base = states([], 1000)[0]
    new = handle(DEFINITION, base, ok("flight", 1), random=lambda: 0.5).state
    copied = new.model_copy(deep=True)  # equal, but nothing shared with the base
    sets = saga_update(base, copied)["$set"]
    assert sets["history"] == [entry.model_dump() for entry in copied.history]
    assert sets["outbox"] == [command.model_dump() for command in copied.outbox]


def test_an_unchanged_outbox_is_left_alone() -> None:
    base = states([], 1000)[0]
    repeated = handle(DEFINITION, base, repeat(1), random=lambda: 0.5).state
    assert "outbox" not in saga_update(base, repeated)["$set"]


def test_the_monitor_counts_the_indexes_an_update_may_change() -> None:
    indexes = saga_index_paths()["sagas"]
    assert touches({"$set": {"steps.0.status": "x", "history.3": {}}}, indexes) == 0
    assert touches({"$set": {"wake_at": None}}, indexes) == 1
    assert touches({"$set": {"outbox": []}}, indexes) == 1  # unpublished_outbox
    assert touches({"$set": {"status": "completed", "updated_at": 1}}, indexes) == 2
    assert touches({"status": "completed"}, indexes) == len(indexes)  # a replacement
