"""Cross-step checks of a saga definition, each problem located by its path.

The per-field rules (names, durations, retry values, unknown keys) live in the pydantic
models of ``schemas.definition``. The rules here relate several parts of a definition to
each other: unique step names, where each ``${…}`` reference may point, and the pivot.

They run on the plain data read from YAML, not on a validated model, so that they still
report their problems when some unrelated field is invalid: the loader returns every
problem of a document at once. Anything of an unexpected type is skipped here, since the
models report it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from coordinator.definitions.yamlsafe import Path
from schemas.conditions import ConditionError, compile_condition, step_names, unknown_names
from schemas.references import Reference, ReferenceSyntaxError, find_references

__all__ = ["Problem", "check_definition"]

Problem = tuple[Path, str]

_EARLIER = "which is not earlier in the saga; earlier steps"
_OWN_OR_EARLIER = "which is neither this step nor an earlier one; usable steps"


def _strings(template: Any, path: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(template, str):
        yield path, template
    elif isinstance(template, Mapping):
        for key, value in template.items():
            yield from _strings(value, (*path, str(key)))
    elif isinstance(template, list):
        for index, value in enumerate(template):
            yield from _strings(value, (*path, index))


def _references(template: Any, path: Path) -> Iterator[tuple[Path, Reference | str]]:
    """Each reference in a template, or a message for each malformed one."""
    for where, text in _strings(template, path):
        try:
            found = list(find_references(text))
        except ReferenceSyntaxError as exc:
            yield where, str(exc)
            continue
        if text.count("${") > len(found):
            yield (
                where,
                (
                    f"malformed reference in {text!r}: every '${{' needs a closing '}}', and "
                    "references cannot be nested"
                ),
            )
        for ref in found:
            yield where, ref


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


def _trigger_problems(trigger: Any) -> Iterator[Problem]:
    if not isinstance(trigger, Mapping):
        return
    for key in ("key", "input"):
        if key not in trigger:
            continue
        for where, ref in _references(trigger[key], ("trigger", key)):
            if isinstance(ref, str):
                yield where, ref
            elif ref.root != "event":
                yield (
                    where,
                    (
                        f"${{{ref.text}}} cannot be used in trigger.{key}: only the event is "
                        "known when a saga starts; use ${event.…}"
                    ),
                )


def _step_problems(
    template: Any, path: Path, visible: list[str], all_steps: list[str], rule: str
) -> Iterator[Problem]:
    """Problems of a step's or compensation's input; ``rule`` says which steps it may read."""
    for where, ref in _references(template, path):
        if isinstance(ref, str):
            yield where, ref
        elif ref.root == "event":
            yield (
                where,
                (
                    f"${{{ref.text}}}: the event is only available in the trigger; pass what "
                    "the steps need through trigger.input and read it as ${input.…}"
                ),
            )
        elif ref.step is not None and ref.step not in visible:
            if ref.step not in all_steps:
                reason = f"which does not exist; steps: {_names(all_steps)}"
            else:
                reason = f"{rule}: {_names(visible)}"
            yield where, f"${{{ref.text}}} refers to step {ref.step!r}, {reason}"


def _steps(items: Any) -> list[tuple[int, Mapping[str, Any]]]:
    if not isinstance(items, list):
        return []
    return [(i, step) for i, step in enumerate(items) if isinstance(step, Mapping)]


def _branches(group: Mapping[str, Any]) -> list[tuple[str, list[tuple[int, Mapping[str, Any]]]]]:
    parallel = group.get("parallel")
    if not isinstance(parallel, Mapping):
        return []
    return [(str(name), _steps(steps)) for name, steps in parallel.items()]


def _leaf_names(data: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for _, item in _steps(data.get("steps")):
        if "parallel" in item:
            for _, steps in _branches(item):
                names += [s["name"] for _, s in steps if isinstance(s.get("name"), str)]
        elif isinstance(item.get("name"), str):
            names.append(item["name"])
    return list(dict.fromkeys(names))


def _condition_problems(
    item: Mapping[str, Any], here: Path, visible: list[str], all_steps: list[str]
) -> Iterator[Problem]:
    expression = item.get("when")
    if not isinstance(expression, str):
        return
    try:
        program = compile_condition(expression)
    except ConditionError:
        return  # the model reports it, with its position
    where = (*here, "when")
    unknown = unknown_names(program, expression)
    if unknown:
        yield (
            where,
            f"the condition reads {', '.join(unknown)}, which it cannot know; a condition "
            "reads input, steps and saga",
        )
    for name in dict.fromkeys(step_names(expression)):
        if name not in visible:
            reason = _EARLIER if name in all_steps else "which does not exist; steps"
            known = visible if name in all_steps else all_steps
            yield where, f"the condition reads step {name!r}, {reason}: {_names(known)}"


def _await_problems(
    spec: Any, here: Path, visible: list[str], all_steps: list[str]
) -> Iterator[Problem]:
    if not isinstance(spec, Mapping):
        return
    for key in ("match", "equals"):
        value = spec.get(key)
        if not isinstance(value, str):
            continue
        where = (*here, "await", key)
        refs = list(_references(value, where))
        if not refs:
            root = "event" if key == "match" else "input"
            yield where, f"{key} must be a reference such as ${{{root}.order_id}}"
        for _, ref in refs:
            if isinstance(ref, str):
                yield where, ref
            elif key == "match" and ref.root != "event":
                yield where, f"${{{ref.text}}}: match reads the event only: use ${{event.…}}"
            elif key == "equals" and ref.root == "event":
                yield (
                    where,
                    f"${{{ref.text}}}: equals is this saga's value; it reads input, saga and "
                    "earlier steps, and match reads the event",
                )
            elif ref.step is not None and ref.step not in visible:
                reason = _EARLIER if ref.step in all_steps else "which does not exist; steps"
                known = visible if ref.step in all_steps else all_steps
                yield (
                    where,
                    f"${{{ref.text}}} refers to step {ref.step!r}, {reason}: {_names(known)}",
                )


class _Walk:
    """The state of one pass over the steps: names seen, the pivot, the problems."""

    def __init__(self, all_steps: list[str]) -> None:
        self.all_steps = all_steps
        self.seen: dict[str, str] = {}
        self.pivot: str | None = None
        self.problems: list[Problem] = []

    def name(self, item: Mapping[str, Any], here: Path, label: str) -> None:
        name = item.get("name")
        if not isinstance(name, str):
            return
        if name in self.seen:
            self.problems.append(
                (
                    (*here, "name"),
                    f"duplicate step name {name!r}: {self.seen[name]} already uses it; step "
                    "names must be unique",
                )
            )
        else:
            self.seen[name] = label

    def leaf(self, step: Mapping[str, Any], here: Path, earlier: list[str]) -> None:
        name = step.get("name")
        self.name(step, here, field_path_text(here))
        self.problems.extend(_condition_problems(step, here, earlier, self.all_steps))
        self.problems.extend(
            _step_problems(step.get("input"), (*here, "input"), earlier, self.all_steps, _EARLIER)
        )
        self.problems.extend(_await_problems(step.get("await"), here, earlier, self.all_steps))
        compensation = step.get("compensation")
        if compensation is not None and self.pivot is not None:
            self.problems.append(
                (
                    (*here, "compensation"),
                    f"step {name!r} comes after the pivot step {self.pivot!r}, so it can never "
                    "be compensated: remove its compensation, or move the step before the pivot",
                )
            )
        if isinstance(compensation, Mapping):
            mine = [*earlier, name] if isinstance(name, str) else earlier
            self.problems.extend(
                _step_problems(
                    compensation.get("input"),
                    (*here, "compensation", "input"),
                    mine,
                    self.all_steps,
                    _OWN_OR_EARLIER,
                )
            )

    def group(self, group: Mapping[str, Any], here: Path, earlier: list[str]) -> list[str]:
        """Check a group; return the names of its steps (visible after it)."""
        self.name(group, here, field_path_text(here))
        self.problems.extend(_condition_problems(group, here, earlier, self.all_steps))
        inside: list[str] = []
        for branch, steps in _branches(group):  # branch names are keys: unique
            mine = list(earlier)
            for index, step in steps:
                where = (*here, "parallel", branch, index)
                self.leaf(step, where, mine)
                if step.get("pivot") is True:
                    self.problems.append(
                        (
                            (*where, "pivot"),
                            "a pivot is not allowed inside a parallel group: put it after "
                            "the group",
                        )
                    )
                if isinstance(step.get("name"), str):
                    mine.append(step["name"])
                    inside.append(step["name"])
        return inside


def field_path_text(loc: Path) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def check_definition(data: Any) -> list[Problem]:
    """Every cross-step problem of a definition's plain data.

    Args:
        data: A definition as read from YAML or JSON (not yet validated).

    Returns:
        ``(path, message)`` pairs, e.g. ``(("steps", 2, "input", "amount"), "…")``.
    """
    if not isinstance(data, Mapping):
        return []
    walk = _Walk(_leaf_names(data))
    walk.problems.extend(_trigger_problems(data.get("trigger")))
    earlier: list[str] = []
    for index, item in _steps(data.get("steps")):
        here: Path = ("steps", index)
        if "parallel" in item:
            earlier = [*earlier, *walk.group(item, here, earlier)]
            continue
        walk.leaf(item, here, earlier)
        name = item.get("name")
        if isinstance(name, str):
            earlier = [*earlier, name]
        if item.get("pivot") is True and walk.pivot is None:
            walk.pivot = name if isinstance(name, str) else f"steps[{index}]"
    return walk.problems
