"""A saga definition drawn as a Mermaid flowchart.

The happy path runs top to bottom: start → each step in order → completed. Every step that
can fail before the pivot has a dashed ``fails`` edge to the compensation of the nearest
earlier step that has one; compensations then chain, dashed, in reverse order down to
``compensated``. A step after a succeeded pivot cannot be compensated: its failure leads
to ``failed`` (an operator retries it). A step that times out has an unknown outcome, so a
dashed ``times out`` edge leads to its own compensation. The pivot is drawn as a hexagon.
"""

from __future__ import annotations

from itertools import pairwise

from schemas.definition import SagaDefinition, Step

__all__ = ["mermaid"]


def _step_node(index: int, step: Step) -> str:
    label = f"{step.name}<br/>{step.participant}.{step.command}"
    if step.pivot:
        return f'    s{index}{{{{"{label}<br/>(pivot)"}}}}'
    return f'    s{index}["{label}"]'


def _compensation_node(index: int, step: Step) -> str:
    assert step.compensation is not None
    label = f"undo {step.name}<br/>{step.participant}.{step.compensation.command}"
    return f'    c{index}["{label}"]:::compensation'


def mermaid(definition: SagaDefinition) -> str:
    """Draw ``definition`` as Mermaid ``flowchart`` text (without a trailing newline).

    Args:
        definition: A validated definition.

    Returns:
        The flowchart: nodes ``start``, ``s0``… (steps), ``c0``… (compensations, numbered
        like their steps), ``done``, and ``compensated`` / ``failed`` where reachable.
    """
    steps = definition.steps
    start = f"start: {definition.trigger.event}" if definition.trigger else "start"
    lines = [
        "flowchart TD",
        f'    start(["{start}"])',
        *(_step_node(i, step) for i, step in enumerate(steps)),
        '    done(["completed"])',
    ]
    pivot = next((i for i, step in enumerate(steps) if step.pivot), None)
    undoable = [
        i for i, step in enumerate(steps) if step.compensation and (pivot is None or i <= pivot)
    ]
    lines += [_compensation_node(i, steps[i]) for i in undoable]
    edges = ["start --> s0"]
    edges += [f"s{i} --> s{i + 1}" for i in range(len(steps) - 1)]
    edges.append(f"s{len(steps) - 1} --> done")
    ends: set[str] = set()
    for i in range(len(steps)):
        if pivot is not None and i > pivot:
            edges.append(f"s{i} -. fails .-> failed")
            ends.add("failed")
            continue
        earlier = [j for j in undoable if j < i]
        target = f"c{earlier[-1]}" if earlier else "compensated"
        edges.append(f"s{i} -. fails .-> {target}")
        if i in undoable:
            edges.append(f"s{i} -. times out .-> c{i}")
    edges += [f"c{later} -.-> c{sooner}" for later, sooner in pairwise(reversed(undoable))]
    if undoable:
        edges.append(f"c{undoable[0]} -.-> compensated")
    if any(edge.endswith("compensated") for edge in edges):
        ends.add("compensated")
    lines += [f'    {end}(["{end}"])' for end in sorted(ends)]
    lines += [f"    {edge}" for edge in edges]
    lines.append("    classDef compensation stroke-dasharray: 4 4")
    return "\n".join(lines)
