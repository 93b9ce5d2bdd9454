"""A definition's graph, laid out for SVG on the server (no JavaScript needed to read it).

The same reading as ``coordinator.definitions.graph.mermaid``: the steps run top to bottom
in the left column, from the start (its trigger event) to ``completed``; each compensation
stands in the right column beside its step, and the compensations chain upwards, dashed,
to ``compensated``. A failing step leads (dashed, red) to the compensation of the nearest
earlier step that has one; after a succeeded pivot (drawn as a hexagon) a failure leads to
``failed``. On a saga's page every node is coloured by its step's status.

Steps of a parallel group (a step with ``parallel``: branch name to steps) are listed in
order with their branch named, so a definition of any shape still draws.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from schemas.definition import SagaDefinition

__all__ = ["Edge", "Graph", "Node", "build_graph"]

NODE_W, NODE_H = 220, 44
ROW = 66
STEP_X, COMP_X = 16, 316
PILL_W = 150


@dataclass(frozen=True, slots=True)
class Node:
    x: float
    y: float
    width: float
    height: float
    label: str
    sublabel: str
    shape: str  # pill, step, pivot, compensation
    status: str  # a step status, "end" or "" (no saga)

    @property
    def cx(self) -> float:
        return self.x + self.width / 2

    @property
    def hexagon(self) -> str:
        x, y, w, h, d = self.x, self.y, self.width, self.height, 12
        points = [
            (x + d, y),
            (x + w - d, y),
            (x + w, y + h / 2),
            (x + w - d, y + h),
            (x + d, y + h),
            (x, y + h / 2),
        ]
        return " ".join(f"{px:.0f},{py:.0f}" for px, py in points)


@dataclass(frozen=True, slots=True)
class Edge:
    x1: float
    y1: float
    x2: float
    y2: float
    style: str  # next, fails, undo


@dataclass(frozen=True, slots=True)
class Graph:
    width: int
    height: int
    nodes: list[Node]
    edges: list[Edge]


@dataclass(frozen=True, slots=True)
class _Flat:
    name: str
    label: str
    participant: str
    command: str
    pivot: bool
    compensation: str | None


def _flatten(definition: SagaDefinition) -> Iterator[_Flat]:
    for step in definition.steps:
        branches: Mapping[str, Any] | None = getattr(step, "parallel", None)
        if branches:
            for branch, inner in branches.items():
                for sub in inner:
                    yield _flat(sub, f"{branch}: {sub.name}")
        else:
            yield _flat(step, step.name)


def _flat(step: Any, label: str) -> _Flat:
    compensation = getattr(step, "compensation", None)
    participant = getattr(step, "participant", None) or ""
    command = getattr(step, "command", None)
    if command is None and getattr(step, "await_", None) is not None:
        command = "await"
    return _Flat(
        name=step.name,
        label=label,
        participant=participant,
        command=str(command or ""),
        pivot=bool(getattr(step, "pivot", False)),
        compensation=compensation.command if compensation is not None else None,
    )


def build_graph(definition: SagaDefinition, statuses: Mapping[str, str] | None = None) -> Graph:
    """Lay out ``definition``; ``statuses`` (step name to status) colours the nodes."""
    statuses = statuses or {}
    steps = list(_flatten(definition))
    pill_x = STEP_X + (NODE_W - PILL_W) / 2
    comp_pill_x = COMP_X + (NODE_W - PILL_W) / 2
    start_label = f"start: {definition.trigger.event}" if definition.trigger else "start"
    nodes = [Node(pill_x, 8, PILL_W, 32, start_label, "", "pill", "end")]
    step_nodes: list[Node] = []
    comp_nodes: dict[int, Node] = {}
    pivot = next((i for i, step in enumerate(steps) if step.pivot), None)
    for i, step in enumerate(steps):
        y = 8 + (i + 1) * ROW
        status = statuses.get(step.name, "")
        shape = "pivot" if step.pivot else "step"
        sub = f"{step.participant}.{step.command}" + (" (pivot)" if step.pivot else "")
        node = Node(STEP_X, y, NODE_W, NODE_H, step.label, sub, shape, status)
        step_nodes.append(node)
        if step.compensation is not None and (pivot is None or i <= pivot):
            comp_status = status if status.startswith("compensat") else ""
            sub = f"{step.participant}.{step.compensation}"
            comp_nodes[i] = Node(
                COMP_X, y, NODE_W, NODE_H, f"undo {step.name}", sub, "compensation", comp_status
            )
    last_y = 8 + (len(steps) + 1) * ROW
    done = Node(pill_x, last_y, PILL_W, 32, "completed", "", "pill", "end")
    compensated = Node(comp_pill_x, 8, PILL_W, 32, "compensated", "", "pill", "end")
    failed = Node(comp_pill_x, last_y, PILL_W, 32, "failed", "", "pill", "end")
    edges: list[Edge] = []
    chain = [nodes[0], *step_nodes, done]
    for upper, lower in pairwise(chain):
        edges.append(Edge(upper.cx, upper.y + upper.height, lower.cx, lower.y, "next"))
    undoable = sorted(comp_nodes)
    uses_failed = False
    for i, node in enumerate(step_nodes):
        earlier = [j for j in undoable if j < i]
        if pivot is not None and i > pivot:
            target, uses_failed = failed, True
        else:
            target = comp_nodes[earlier[-1]] if earlier else compensated
        edges.append(
            Edge(
                node.x + node.width,
                node.y + node.height / 2,
                target.x,
                target.y + target.height / 2,
                "fails",
            )
        )
    comp_chain = [comp_nodes[j] for j in reversed(undoable)] + [compensated]
    for lower, upper in pairwise(comp_chain):
        edges.append(Edge(lower.cx, lower.y, upper.cx, upper.y + upper.height, "undo"))
    nodes += step_nodes + list(comp_nodes.values()) + [done, compensated]
    if uses_failed:
        nodes.append(failed)
    return Graph(width=COMP_X + NODE_W + 16, height=int(last_y + 44), nodes=nodes, edges=edges)
