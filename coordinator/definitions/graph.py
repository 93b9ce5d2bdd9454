"""A saga definition drawn as a Mermaid flowchart.

The happy path runs top to bottom: start → each step in order → completed. A parallel group
is a subgraph: a fork node leads to the first step of every branch, each branch's last step
leads to a join node, and the join to what follows. A step or group with a ``when`` is
entered by an edge labelled ``if: …``; a dashed ``else: skipped`` edge goes around it. An
await step is drawn as a parallelogram with the event it waits for.

Compensations (dashed boxes) run from the last item to the first; a group's branches are
undone side by side, each from its last step to its first. Every step that can fail
before the pivot has a dashed ``fails`` edge to the compensations that then run (its
group's, or those of the nearest earlier item that has any), or to ``compensated``. A
step after a succeeded pivot cannot be compensated: its failure leads to ``failed``. A
command step that times out has an unknown outcome, so a dashed ``times out`` edge leads
to its own compensation. The pivot is drawn as a hexagon.
"""

from __future__ import annotations

from itertools import pairwise

from schemas.definition import AwaitStep, Group, Leaf, SagaDefinition

__all__ = ["mermaid"]


def _text(value: str) -> str:
    return value.replace('"', "#quot;")


def _step_node(leaf: Leaf) -> str:
    step, i = leaf.step, leaf.index
    if isinstance(step, AwaitStep):
        return f'    s{i}[/"{step.name}<br/>await {step.awaits.event}"/]'
    label = f"{step.name}<br/>{step.participant}.{step.command}"
    if step.pivot:
        return f'    s{i}{{{{"{label}<br/>(pivot)"}}}}'
    return f'    s{i}["{label}"]'


def _compensation_node(definition: SagaDefinition, leaf: Leaf) -> str:
    step = leaf.step
    assert step.compensation is not None
    participant = definition.compensation_participant(step)
    label = f"undo {step.name}<br/>{participant}.{step.compensation.command}"
    return f'    c{leaf.index}["{label}"]:::compensation'


class _Drawing:
    def __init__(self, definition: SagaDefinition) -> None:
        self.definition = definition
        self.leaves = definition.leaves
        pivot = next((leaf.index for leaf in self.leaves if leaf.step.pivot), None)
        self.pivot = pivot
        self.undoable = [
            leaf.index
            for leaf in self.leaves
            if leaf.step.compensation and (pivot is None or leaf.index <= pivot)
        ]
        self.lines: list[str] = []
        self.edges: list[str] = []

    def happy_path(self) -> None:
        previous = ["start"]
        branches = self.definition.branches
        for top, item in enumerate(self.definition.steps):
            if isinstance(item, Group):
                self.lines.append(f'    subgraph g{top}["{item.name} (parallel)"]')
                self.lines.append(f"    f{top}(( ))")
                for branch in branches[top]:
                    self.lines += [_step_node(leaf) for leaf in branch]
                self.lines.append(f"    j{top}(( ))")
                self.lines.append("    end")
                entry, exits = f"f{top}", [f"j{top}"]
                for branch in branches[top]:
                    self._chain(f"f{top}", branch, f"j{top}")
            else:
                leaf = branches[top][0][0]
                self.lines.append(_step_node(leaf))
                entry, exits = f"s{leaf.index}", [f"s{leaf.index}"]
            self._enter(previous, entry, item.when)
            if item.when:
                after = self._entry_of(top + 1)
                self.edges += [f"{p} -. else: skipped .-> {after}" for p in previous]
            previous = exits
        self.edges += [f"{p} --> done" for p in previous]

    def _entry_of(self, top: int) -> str:
        if top >= len(self.definition.steps):
            return "done"
        if isinstance(self.definition.steps[top], Group):
            return f"f{top}"
        return f"s{self.definition.branches[top][0][0].index}"

    def _enter(self, previous: list[str], entry: str, when: str | None) -> None:
        arrow = f'-->|"if: {_text(when)}"|' if when else "-->"
        self.edges += [f"{p} {arrow} {entry}" for p in previous]

    def _chain(self, fork: str, branch: tuple[Leaf, ...], join: str) -> None:
        previous = [fork]
        for position, leaf in enumerate(branch):
            self._enter(previous, f"s{leaf.index}", leaf.step.when)
            if leaf.step.when:
                after = f"s{branch[position + 1].index}" if position + 1 < len(branch) else join
                self.edges += [f"{p} -. else: skipped .-> {after}" for p in previous]
            previous = [f"s{leaf.index}"]
        self.edges += [f"{p} --> {join}" for p in previous]

    def compensations(self) -> set[str]:
        """The undo chains and the failure edges; returns the end nodes used."""
        branches = self.definition.branches
        entries: dict[int, list[str]] = {}
        exits: list[str] = []
        for top in reversed(range(len(branches))):
            chains = [
                [f"c{leaf.index}" for leaf in reversed(branch) if leaf.index in self.undoable]
                for branch in branches[top]
            ]
            chains = [chain for chain in chains if chain]
            if not chains:
                continue
            entries[top] = [chain[0] for chain in chains]
            for chain in chains:
                self.edges += [f"{a} -.-> {b}" for a, b in pairwise(chain)]
                self.edges += [f"{e} -.-> {chain[0]}" for e in exits]
            exits = [chain[-1] for chain in chains]
        self.edges += [f"{e} -.-> compensated" for e in exits]
        ends = {"compensated"} if exits else set()
        for leaf in self.leaves:
            if self.pivot is not None and leaf.index > self.pivot:
                self.edges.append(f"s{leaf.index} -. fails .-> failed")
                ends.add("failed")
                continue
            earlier = [top for top in entries if top < leaf.top]
            if leaf.group is not None and leaf.top in entries:
                targets = entries[leaf.top]
            else:
                targets = entries[max(earlier)] if earlier else ["compensated"]
            self.edges += [f"s{leaf.index} -. fails .-> {t}" for t in targets]
            ends.update(t for t in targets if t == "compensated")
            if leaf.index in self.undoable and not isinstance(leaf.step, AwaitStep):
                self.edges.append(f"s{leaf.index} -. times out .-> c{leaf.index}")
        return ends


def mermaid(definition: SagaDefinition) -> str:
    """Draw ``definition`` as Mermaid ``flowchart`` text (without a trailing newline).

    Args:
        definition: A validated definition.

    Returns:
        The flowchart: nodes ``start``, ``s0``… (steps, numbered in definition order with
        group branches flattened), ``f<n>``/``j<n>`` (fork and join of the group at
        ``steps[n]``, inside subgraph ``g<n>``), ``c0``… (compensations, numbered like their
        steps), ``done``, and ``compensated`` / ``failed`` where reachable.
    """
    drawing = _Drawing(definition)
    start = f"start: {definition.trigger.event}" if definition.trigger else "start"
    drawing.lines += ["flowchart TD", f'    start(["{start}"])']
    drawing.happy_path()
    drawing.lines.append('    done(["completed"])')
    leaves = definition.leaves
    drawing.lines += [_compensation_node(definition, leaves[i]) for i in drawing.undoable]
    ends = drawing.compensations()
    lines = drawing.lines + [f'    {end}(["{end}"])' for end in sorted(ends)]
    lines += [f"    {edge}" for edge in drawing.edges]
    lines.append("    classDef compensation stroke-dasharray: 4 4")
    return "\n".join(lines)
