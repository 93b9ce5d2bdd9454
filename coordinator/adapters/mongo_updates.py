"""A transition as a MongoDB update: the fields it changed, not the whole document.

``saga_update(base, new)`` compares the state a transition started from (``base``, the one
stored at the expected revision) with the state it produced (``new``) and returns the
update operators that turn the stored document into ``new``'s:

* a top-level field that changed: ``$set`` of the field;
* a step that changed: ``$set`` of ``steps.<i>.<field>``, and for its action and
  compensation ``steps.<i>.action.<field>``: a reply changes four or five small fields of
  one step, not the steps;
* the history, which only grows at its end, may lose entries at its front (the cap) and
  may have one existing entry updated in place (a counted repeat):

  - entries appended, maybe some dropped: ``$push`` with ``$each`` (the new entries) and,
    when entries were dropped, ``$slice: -len(new history)``, which keeps the last ones
    exactly as the engine's trim does;
  - entries updated in place and nothing appended or dropped: ``$set`` of
    ``history.<i>``;
  - anything else (both at once, or a history not derived from ``base``'s): ``$set`` of
    the whole history. MongoDB refuses ``$set`` of ``history.<i>`` together with a
    ``$push`` to ``history`` in one update;
* ``revision``: ``$inc`` by one (the filter checks the expected revision);
* ``wake_at``: always ``$set``, changed or not, as a replace would: ``claim_due`` pushes a
  stored ``wake_at`` forward without raising the revision, and the transition's own value
  must replace that lease, exactly as before.

"Changed" is decided without a doubt or the field is written: a value is unchanged when it
is the very object ``base`` holds (the engine copies the containers it changes and shares
everything else: history entries, outputs, the input), or a scalar of the same type and
value. Anything else is written, so a mistake here can only cost bytes, never lose a change.

``outbox`` is written when its entries changed, else left alone: ``clear_outbox`` may have
removed published entries from the stored outbox meanwhile (it does not raise the revision),
and leaving them removed spares a harmless resend that a replace would have caused.
``lease_token`` (set by ``claim_due``) stays on the document; it is dropped on read.

The caller writes the update only where it is smaller than the whole document, and checks
the size budget on the whole new document either way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from coordinator.engine.state import SagaState, StepState

__all__ = ["saga_update"]

Document = dict[str, Any]

_SCALARS = (str, int, float, bool, type(None), datetime)
_PHASES = ("action", "compensation")
_SPECIAL = frozenset({"id", "revision", "history", "steps", "wake_at"})


def _same(old: Any, new: Any) -> bool:
    """Whether ``new`` is certainly what ``old`` stored: the same object, or an equal
    scalar of the same type (``1``, ``1.0`` and ``True`` are equal in Python, not in BSON)."""
    if old is new:
        return True
    return type(old) is type(new) and isinstance(new, _SCALARS) and old == new


def _dumped(value: Any) -> Any:
    """``value`` as ``SagaState.to_document`` stores it."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="python")
    if isinstance(value, list):
        return [_dumped(item) for item in value]
    return value


def _same_list(old: list[Any], new: list[Any]) -> bool:
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))


def _model_fields(path: str, old: BaseModel, new: BaseModel, sets: Document) -> None:
    """``$set`` of ``path.<field>`` for every field of ``new`` not certainly unchanged."""
    for name in type(new).model_fields:
        value = getattr(new, name)
        if not _same(getattr(old, name), value):
            sets[f"{path}.{name}"] = _dumped(value)


def _steps(old: list[StepState], new: list[StepState], sets: Document) -> None:
    if len(old) != len(new) or any(a.name != b.name for a, b in zip(old, new, strict=True)):
        sets["steps"] = _dumped(new)
        return
    for index, (before, after) in enumerate(zip(old, new, strict=True)):
        if before is after:
            continue
        path = f"steps.{index}"
        for name in type(after).model_fields:
            value = getattr(after, name)
            previous = getattr(before, name)
            if name in _PHASES and type(previous) is type(value):
                _model_fields(f"{path}.{name}", previous, value, sets)
            elif not _same(previous, value):
                sets[f"{path}.{name}"] = _dumped(value)


def _history(old: list[Any], new: list[Any], sets: Document, pushes: Document) -> None:
    """The history's change: a ``$push`` (appended, front dropped), ``$set`` of changed
    entries, or ``$set`` of the whole history (see the module's docstring)."""
    if _same_list(old, new):
        return
    # Entries dropped from the front: where ``new``'s first entry sits in ``old`` (0 when it
    # is not there: an entry changed in place, or nothing of ``old`` kept). Whatever the
    # guess, only a form verified below is written, else the whole history.
    dropped = next((index for index, entry in enumerate(old) if new and entry is new[0]), 0)
    kept = len(old) - dropped
    if not new or kept > len(new):
        sets["history"] = _dumped(new)
        return
    changed = [index for index in range(kept) if old[dropped + index] is not new[index]]
    appended = new[kept:]
    if changed and (appended or dropped):
        sets["history"] = _dumped(new)
    elif changed:
        for index in changed:
            sets[f"history.{index}"] = _dumped(new[index])
    else:
        push: Document = {"$each": _dumped(appended)}
        if dropped:
            push["$slice"] = -len(new)
        pushes["history"] = push


def saga_update(base: SagaState, new: SagaState) -> Document:
    """The update turning ``base``'s stored document into ``new``'s (see the module)."""
    sets: Document = {}
    pushes: Document = {}
    for name in SagaState.model_fields:
        if name in _SPECIAL:
            continue
        value = getattr(new, name)
        if not _same(getattr(base, name), value) and not (
            isinstance(value, list) and _same_list(getattr(base, name), value)
        ):
            sets[name] = _dumped(value)
    _steps(base.steps, new.steps, sets)
    _history(base.history, new.history, sets, pushes)
    sets["wake_at"] = new.wake_at
    update: Document = {"$set": sets}
    if pushes:
        update["$push"] = pushes
    if new.revision == base.revision + 1:
        update["$inc"] = {"revision": 1}
    else:
        sets["revision"] = new.revision
    return update
