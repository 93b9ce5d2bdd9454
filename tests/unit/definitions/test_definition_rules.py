"""Per-field and cross-step rules: every problem reported at once, with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.definitions import load_definition, load_file
from coordinator.errors import DefinitionError
from schemas.definition import SagaDefinition

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"

HEAD = """\
name: demo
version: 1
trigger:
  event: thing.happened
  key: ${event.id}
steps:
"""


def errors(text: str) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        load_definition(text, "demo.yaml")
    return [str(error) for error in caught.value.errors]


def step(name: str, extra: str = "") -> str:
    return f"  - name: {name}\n    participant: svc\n    command: do_it\n{extra}"


@pytest.mark.parametrize("file", ["order-fulfillment.yaml", "trip-booking.yaml"])
def test_examples_load(file: str) -> None:
    definition = load_file(SCHEMAS / file)
    assert isinstance(definition, SagaDefinition)
    assert definition.version == 2


def test_order_fulfillment_example() -> None:
    definition = load_file(SCHEMAS / "order-fulfillment.yaml")
    assert [s.name for s in definition.steps] == [
        "reserve-stock",
        "fraud-review",
        "charge-payment",
        "ship-order",
    ]
    assert definition.step("fraud-review").when == "input.total >= 1000 && !has(input.trusted)"
    assert definition.trigger is not None and definition.trigger.key == "${event.order_id}"
    assert definition.step("ship-order").pivot
    assert definition.defaults.retry.max_attempts == 3


def test_json_input_works() -> None:
    text = (
        '{"name": "j", "version": 2, "steps": [{"name": "a", "participant": "p", "command": "c"}]}'
    )
    assert load_definition(text).version == 2


def test_many_errors_at_once_sorted_by_line() -> None:
    text = """\
name: Order_X
version: 0
colour: red
defaults:
  timeout: 0s
  retry: {backoff: 2s, max_backoff: 1s}
steps:
  - name: a
    participant: svc
    timeout: 30
"""
    assert errors(text) == [
        "demo.yaml:1: name: invalid name 'Order_X': use lowercase letters, digits and '-', "
        "starting with a letter, at most 63 characters (e.g. order-fulfillment)",
        "demo.yaml:2: version: Input should be greater than or equal to 1, got 0",
        "demo.yaml:3: colour: unknown key 'colour'; allowed keys: name, version, description, "
        "trigger, timeout, defaults, steps",
        "demo.yaml:5: defaults.timeout: a timeout must be longer than zero, for example 30s",
        "demo.yaml:6: defaults.retry.max_backoff: max_backoff (1s) is shorter than backoff "
        "(2s); the cap must be at least the first delay",
        "demo.yaml:8: steps[0].command: missing required key 'command'",
        "demo.yaml:10: steps[0].timeout: a duration is a string such as 500ms, 30s, 5m, 2h "
        "or 1d, not 30",
    ]


def test_bad_duration_text() -> None:
    assert errors(HEAD + step("a", "    timeout: 5 minutes\n")) == [
        "demo.yaml:10: steps[0].timeout: invalid duration '5 minutes': use a whole number and "
        "one of ms, s, m, h, d (for example 500ms, 30s, 5m, 2h, 1d)"
    ]


def test_bad_participant_and_command_names() -> None:
    assert errors(HEAD + "  - {name: a, participant: inv.x, command: '*'}\n") == [
        "demo.yaml:7: steps[0].participant: invalid participant 'inv.x': use one word of "
        "letters, digits, '_' and '-', starting with a letter, at most 63 characters (no dots "
        "or wildcards)",
        "demo.yaml:7: steps[0].command: invalid command '*': use one word of letters, digits, "
        "'_' and '-', starting with a letter, at most 63 characters (no dots or wildcards)",
    ]


def test_unknown_key_in_compensation_lists_allowed_keys() -> None:
    extra = "    compensation:\n      command: undo\n      retries: 3\n"
    assert errors(HEAD + step("a", extra)) == [
        "demo.yaml:12: steps[0].compensation.retries: unknown key 'retries'; allowed keys: "
        "participant, command, input, timeout, retry"
    ]


def test_missing_key_points_at_parent_mapping() -> None:
    extra = "    compensation:\n      input: {}\n"
    assert errors(HEAD + step("a", extra)) == [
        "demo.yaml:10: steps[0].compensation.command: missing required key 'command'"
    ]


def test_version_must_be_an_integer() -> None:
    assert errors(HEAD.replace("version: 1", "version: true") + step("a")) == [
        "demo.yaml:2: version: Input should be a valid integer, got True"
    ]


def test_duplicate_step_names() -> None:
    assert errors(HEAD + step("a") + step("b") + step("a")) == [
        "demo.yaml:13: steps[2].name: duplicate step name 'a': steps[0] already uses it; "
        "step names must be unique"
    ]


def test_forward_reference() -> None:
    extra = "    input: {amount: '${steps.ship.output.x}'}\n"
    text = HEAD + step("reserve-stock") + step("charge-payment", extra) + step("ship")
    assert errors(text) == [
        "demo.yaml:13: steps[1].input.amount: ${steps.ship.output.x} refers to step 'ship', "
        "which is not earlier in the saga; earlier steps: reserve-stock"
    ]


def test_self_reference_in_input_but_allowed_in_compensation() -> None:
    extra = (
        "    input: {x: '${steps.a.output.id}'}\n"
        "    compensation: {command: undo, input: {id: '${steps.a.output.id}'}}\n"
    )
    assert errors(HEAD + step("a", extra)) == [
        "demo.yaml:10: steps[0].input.x: ${steps.a.output.id} refers to step 'a', which is "
        "not earlier in the saga; earlier steps: none"
    ]


def test_compensation_reference_to_later_step() -> None:
    extra = "    compensation: {command: undo, input: {id: '${steps.b.output.id}'}}\n"
    assert errors(HEAD + step("a", extra) + step("b")) == [
        "demo.yaml:10: steps[0].compensation.input.id: ${steps.b.output.id} refers to step "
        "'b', which is neither this step nor an earlier one; usable steps: a"
    ]


def test_reference_to_unknown_step() -> None:
    extra = "    input:\n      - ${steps.nope.output}\n"
    assert errors(HEAD + step("a") + step("b", extra)) == [
        "demo.yaml:14: steps[1].input[0]: ${steps.nope.output} refers to step 'nope', which "
        "does not exist; steps: a, b"
    ]


def test_unknown_root_and_malformed_references() -> None:
    extra = "    input:\n      a: ${env.HOME}\n      b: 'x ${input.a'\n      c: ${input.a + 1}\n"
    assert errors(HEAD + step("a", extra)) == [
        "demo.yaml:11: steps[0].input.a: unknown root 'env' in ${env.HOME}; known roots: "
        "input, event, steps, saga",
        "demo.yaml:12: steps[0].input.b: malformed reference in 'x ${input.a': every '${' "
        "needs a closing '}', and references cannot be nested",
        "demo.yaml:13: steps[0].input.c: invalid reference ${input.a + 1}: a path is "
        "dot-separated names (letters, digits, _ and -); expressions are not supported",
    ]


def test_event_only_in_trigger() -> None:
    extra = "    input: {id: '${event.id}'}\n"
    assert errors(HEAD + step("a", extra)) == [
        "demo.yaml:10: steps[0].input.id: ${event.id}: the event is only available in the "
        "trigger; pass what the steps need through trigger.input and read it as ${input.…}"
    ]


def test_trigger_uses_only_the_event() -> None:
    text = HEAD.replace("${event.id}", "${input.id}") + "  input: {k: '${saga.id}'}\n"
    text = text.replace("steps:\n  input", "  input") + "steps:\n" + step("a")
    assert errors(text) == [
        "demo.yaml:5: trigger.key: ${input.id} cannot be used in trigger.key: only the event "
        "is known when a saga starts; use ${event.…}",
        "demo.yaml:6: trigger.input.k: ${saga.id} cannot be used in trigger.input: only the "
        "event is known when a saga starts; use ${event.…}",
    ]


def test_saga_and_input_roots_anywhere_in_steps() -> None:
    extra = "    input: {id: '${saga.id}', key: 'k-${saga.key}', x: '${input.x}'}\n"
    assert load_definition(HEAD + step("a", extra)).steps[0].input["key"] == "k-${saga.key}"


def test_compensation_after_pivot() -> None:
    comp = "    compensation: {command: undo}\n"
    text = HEAD + step("a", comp) + step("b", "    pivot: true\n" + comp) + step("c", comp)
    assert errors(text) == [
        "demo.yaml:19: steps[2].compensation: step 'c' comes after the pivot step 'b', so it "
        "can never be compensated: remove its compensation, or move the step before the pivot"
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError) as caught:
        load_file(tmp_path / "missing.yaml")
    assert [str(e) for e in caught.value.errors] == [
        f"{tmp_path / 'missing.yaml'}:1: <document>: cannot read the file: No such file or "
        "directory"
    ]


def test_bad_event_type_and_pivot_value() -> None:
    text = HEAD.replace("thing.happened", "thing.*") + step("a", "    pivot: yes\n")
    assert errors(text) == [
        "demo.yaml:4: trigger.event: invalid event 'thing.*': use dot-separated words of "
        "letters, digits, '_' and '-' (e.g. order.placed)",
        "demo.yaml:10: steps[0].pivot: Input should be a valid boolean, got 'yes'",
    ]


def test_step_retry_and_timeout_rules() -> None:
    extra = "    timeout: 0ms\n    retry: {max_attempts: 0, multiplier: 0.5}\n"
    assert errors(HEAD + step("a", extra)) == [
        "demo.yaml:10: steps[0].timeout: a timeout must be longer than zero, for example 30s",
        "demo.yaml:11: steps[0].retry.max_attempts: Input should be greater than or equal to "
        "1, got 0",
        "demo.yaml:11: steps[0].retry.multiplier: Input should be greater than or equal to 1, "
        "got 0.5",
    ]
