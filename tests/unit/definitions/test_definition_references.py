"""Reference interpolation: data look-ups only."""

from __future__ import annotations

import pytest

from schemas.references import ReferenceMissing, resolve

CONTEXT = {
    "input": {"order_id": "o-1", "items": [{"sku": "A", "qty": 2}], "total": 25.5},
    "steps": {"reserve": {"output": {"reservation_id": "r-7"}}},
    "saga": {"id": "s-1", "key": "o-1"},
}


def test_exact_reference_keeps_the_type() -> None:
    assert resolve("${input.items}", CONTEXT) == [{"sku": "A", "qty": 2}]
    assert resolve("${input.total}", CONTEXT) == 25.5
    assert resolve("${input.items.0.qty}", CONTEXT) == 2


def test_embedded_reference_becomes_text() -> None:
    assert resolve("order ${input.order_id} costs ${input.total}", CONTEXT) == (
        "order o-1 costs 25.5"
    )
    assert resolve("${saga.id}/${input.items}", CONTEXT) == 's-1/[{"sku":"A","qty":2}]'


def test_templates_resolve_recursively() -> None:
    template = {"id": "${steps.reserve.output.reservation_id}", "n": [1, "${saga.key}"]}
    assert resolve(template, CONTEXT) == {"id": "r-7", "n": [1, "o-1"]}


def test_missing_path_names_the_path() -> None:
    with pytest.raises(ReferenceMissing) as caught:
        resolve({"x": "${input.customer.name}"}, CONTEXT)
    assert caught.value.path == "input.customer.name"
    assert str(caught.value) == "${input.customer.name}: input has no field 'customer'"


def test_unavailable_root() -> None:
    with pytest.raises(ReferenceMissing) as caught:
        resolve("${event.id}", CONTEXT)
    assert str(caught.value) == "${event.id}: 'event' is not available here"
