"""The definition's graph: nodes in place, failure and compensation edges, colours."""

from __future__ import annotations

from coordinator.console.graph import build_graph
from tests.unit.engine.conversation import ORDER, definition


def test_steps_compensations_and_ends() -> None:
    graph = build_graph(definition(ORDER), {"reserve-stock": "compensated", "notify": "failed"})
    labels = [node.label for node in graph.nodes]
    assert labels[0] == "start"
    for name in ("reserve-stock", "notify", "charge-payment", "ship-order", "invoice"):
        assert name in labels
    assert {"undo reserve-stock", "undo charge-payment", "completed", "compensated"} <= set(labels)
    assert "failed" in labels  # invoice comes after the pivot
    pivot = next(node for node in graph.nodes if node.label == "ship-order")
    assert pivot.shape == "pivot" and pivot.hexagon.count(",") == 6
    by_label = {node.label: node for node in graph.nodes}
    assert by_label["reserve-stock"].status == "compensated"
    assert by_label["undo reserve-stock"].status == "compensated"
    assert by_label["notify"].status == "failed"
    styles = [edge.style for edge in graph.edges]
    assert styles.count("next") == 6  # start, five steps, completed
    assert styles.count("fails") == 5
    assert styles.count("undo") == 2  # undo charge → undo reserve → compensated
    assert all(0 <= edge.x2 <= graph.width and 0 <= edge.y2 <= graph.height for edge in graph.edges)


def test_a_definition_without_compensations_fails_to_compensated() -> None:
    steps = [{"name": "only", "participant": "p", "command": "c"}]
    graph = build_graph(definition(ORDER, steps=steps))
    assert [edge.style for edge in graph.edges] == ["next", "next", "fails"]
    assert not any(node.label == "failed" for node in graph.nodes)
