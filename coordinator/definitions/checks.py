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


def _steps(data: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    steps = data.get("steps")
    if not isinstance(steps, list):
        return []
    return [(i, step) for i, step in enumerate(steps) if isinstance(step, Mapping)]


def check_definition(data: Any) -> list[Problem]:
    """Every cross-step problem of a definition's plain data.

    Args:
        data: A definition as read from YAML or JSON (not yet validated).

    Returns:
        ``(path, message)`` pairs, e.g. ``(("steps", 2, "input", "amount"), "…")``.
    """
    if not isinstance(data, Mapping):
        return []
    problems: list[Problem] = list(_trigger_problems(data.get("trigger")))
    steps = _steps(data)
    all_names = list(dict.fromkeys(s["name"] for _, s in steps if isinstance(s.get("name"), str)))
    seen: dict[str, int] = {}
    earlier: list[str] = []
    pivot: str | None = None
    for index, step in steps:
        name = step.get("name")
        here = ("steps", index)
        if isinstance(name, str) and name in seen:
            problems.append(
                (
                    (*here, "name"),
                    f"duplicate step name {name!r}: steps[{seen[name]}] already uses it; "
                    "step names must be unique",
                )
            )
        problems.extend(
            _step_problems(step.get("input"), (*here, "input"), earlier, all_names, _EARLIER)
        )
        compensation = step.get("compensation")
        if compensation is not None and pivot is not None:
            problems.append(
                (
                    (*here, "compensation"),
                    f"step {name!r} comes after the pivot step {pivot!r}, so it can never be "
                    "compensated: remove its compensation, or move the step before the pivot",
                )
            )
        if isinstance(compensation, Mapping):
            mine = [*earlier, name] if isinstance(name, str) else earlier
            problems.extend(
                _step_problems(
                    compensation.get("input"),
                    (*here, "compensation", "input"),
                    mine,
                    all_names,
                    _OWN_OR_EARLIER,
                )
            )
        if isinstance(name, str):
            seen.setdefault(name, index)
            earlier.append(name)
        if step.get("pivot") is True and pivot is None:
            pivot = name if isinstance(name, str) else f"steps[{index}]"
    return problems
