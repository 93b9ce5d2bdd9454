"""Validation of ``when``, ``await`` and ``parallel`` (SPEC §2, §2.1), and of the bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.definitions import load_definition, load_file, mermaid
from coordinator.errors import DefinitionError
from schemas.definition import AwaitStep, Group, SagaDefinition

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "trip-parallel.yaml"
SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"

HEAD = "name: demo\nversion: 1\nsteps:\n"


def errors(text: str) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        load_definition(text, "demo.yaml")
    return [str(error) for error in caught.value.errors]


def test_the_fixture_with_every_construct_loads() -> None:
    definition = load_file(FIXTURE)
    assert isinstance(definition.steps[1], Group) and isinstance(definition.steps[2], AwaitStep)
    names = [leaf.step.name for leaf in definition.leaves]
    assert names == [
        "fraud-review",
        "book-flight",
        "book-hotel",
        "book-breakfast",
        "payment-authorized",
        "confirm",
    ]
    assert set(definition.conditions) == {"fraud-review", "book-breakfast"}
    assert definition.conditions is definition.conditions  # compiled once, then cached
    assert [step.name for step in definition.awaiting("payment.authorized")] == [
        "payment-authorized"
    ]


def test_a_condition_with_a_syntax_error_is_located_with_its_position() -> None:
    text = HEAD + "  - name: a\n    participant: p\n    command: c\n    when: input.x >\n"
    [error] = errors(text)
    assert error.startswith("demo.yaml:7: steps[0].when: the condition does not compile: ")
    assert "line 1, column" in error


def test_a_condition_may_not_read_unknown_names_or_later_steps() -> None:
    text = (
        HEAD
        + "  - name: a\n    participant: p\n    command: c\n"
        + '    when: event.x == 1 && steps["b"].status == "succeeded"\n'
        + "  - name: b\n    participant: p\n    command: c\n"
    )
    assert errors(text) == [
        "demo.yaml:7: steps[0].when: the condition reads event, which it cannot know; a "
        "condition reads input, steps and saga",
        "demo.yaml:7: steps[0].when: the condition reads step 'b', which is not earlier in the "
        "saga; earlier steps: none",
    ]


def test_comprehension_variables_are_not_unknown_names_but_nesting_is_refused() -> None:
    ok = HEAD + "  - {name: a, participant: p, command: c, when: 'input.items.all(i, i.n > 0)'}\n"
    assert load_definition(ok).leaves[0].step.when
    nested = "input.a.all(x, input.b.exists(y, x == y))"
    [error] = errors(HEAD + f"  - {{name: a, participant: p, command: c, when: '{nested}'}}\n")
    assert "at most one is allowed" in error


def test_await_references_are_checked() -> None:
    text = (
        HEAD
        + "  - name: w\n    await:\n      event: paid\n"
        + "      match: ${input.id}\n      equals: ${event.id}\n"
    )
    assert errors(text) == [
        "demo.yaml:7: steps[0].await.match: ${input.id}: match reads the event only: use "
        "${event.…}",
        "demo.yaml:8: steps[0].await.equals: ${event.id}: equals is this saga's value; it "
        "reads input, saga and earlier steps, and match reads the event",
    ]


def test_an_await_step_has_no_retry_and_its_compensation_names_a_participant() -> None:
    base = (
        HEAD + "  - name: w\n    await: {event: e, match: '${event.id}', equals: '${input.id}'}\n"
    )
    [retry] = errors(base + "    retry: {max_attempts: 2}\n")
    assert retry.startswith("demo.yaml:6: steps[0].retry: unknown key 'retry'; allowed keys: ")
    [undo] = errors(base + "    compensation: {command: void}\n")
    assert "must name its participant" in undo


def test_references_across_branches_are_refused() -> None:
    text = HEAD + (
        "  - name: g\n    parallel:\n"
        "      one:\n        - {name: a, participant: p, command: c}\n"
        "      two:\n        - {name: b, participant: p, command: c, "
        "input: {x: '${steps.a.output.x}'}}\n"
        "  - {name: after, participant: p, command: c, input: {x: '${steps.b.output.x}'}}\n"
    )
    assert errors(text) == [
        "demo.yaml:9: steps[0].parallel.two[0].input.x: ${steps.a.output.x} refers to step "
        "'a', which is not earlier in the saga; earlier steps: none"
    ]


def test_groups_need_two_branches_no_nesting_no_pivot_and_unique_names() -> None:
    one = HEAD + "  - name: g\n    parallel:\n      one:\n"
    one += "        - {name: a, participant: p, command: c}\n"
    [few] = errors(one)
    assert few.startswith("demo.yaml:5: steps[0].parallel: ")
    nested = HEAD + (
        "  - name: g\n    parallel:\n"
        "      one:\n        - name: inner\n          parallel: {x: [], y: []}\n"
        "      two:\n        - {name: a, participant: p, command: c, pivot: true}\n"
        "  - {name: a, participant: p, command: c}\n"
    )
    found = errors(nested)
    assert any("steps[0].parallel.one[0]: groups do not nest" in e for e in found)
    assert any("steps[0].parallel.two[0].pivot: a pivot is not allowed inside" in e for e in found)
    assert any("steps[1].name: duplicate step name 'a'" in e for e in found)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("366d", "longer than the longest allowed, 365d"),
        ("99999999999999999999s", "too long: the longest is 365d"),
        ("8760h", None),
    ],
)
def test_durations_are_bounded_at_validation(value: str, message: str | None) -> None:
    text = f"name: demo\nversion: 1\ntimeout: {value}\n"
    text += "steps:\n  - {name: a, participant: p, command: c}\n"
    if message is None:
        assert load_definition(text).timeout is not None
    else:
        [error] = errors(text)
        assert error.startswith("demo.yaml:3: timeout: ") and message in error


@pytest.mark.parametrize(
    "field",
    [
        "version: 123456789012345678901234567890",
        "defaults: {retry: {max_attempts: 99999999999999999999999}}",
        "defaults: {retry: {multiplier: 1e400}}",
        "defaults: {retry: {multiplier: 99999999999999999999999999999999999}}",
    ],
)
def test_huge_numbers_are_validation_errors(field: str) -> None:
    text = f"name: demo\n{field}\n" + ("version: 1\n" if "version" not in field else "")
    found = errors(text + "steps:\n  - {name: a, participant: p, command: c}\n")
    assert len(found) == 1 and found[0].startswith("demo.yaml:2: ")


ACCEPTED = [
    SCHEMAS / "order-fulfillment.yaml",
    SCHEMAS / "trip-booking.yaml",
    FIXTURE,
]


@pytest.mark.parametrize(
    "retry",
    ["{backoff: 598568s}", "{backoff: 2m, multiplier: 3.0}", "{backoff: 1s, max_backoff: 2h}"],
)
def test_a_backoff_above_the_default_cap_raises_the_cap_and_reloads(retry: str) -> None:
    text = f"{HEAD}  - {{name: a, participant: p, command: c, retry: {retry}}}\n"
    definition = load_definition(text)
    reloaded = SagaDefinition.model_validate(definition.model_dump(mode="json"))
    assert reloaded == definition
    policy = definition.step_retry(definition.leaves[0].step)
    assert policy.max_backoff >= policy.backoff


@pytest.mark.parametrize("file", ACCEPTED, ids=lambda path: path.name)
def test_every_accepted_definition_reloads_from_its_stored_form(file: Path) -> None:
    definition = load_file(file)
    stored = definition.model_dump(mode="json")
    assert SagaDefinition.model_validate(stored) == definition
    assert load_definition(json.dumps(stored)) == definition


def test_a_definition_without_the_new_keys_dumps_as_before() -> None:
    definition = load_definition(
        HEAD
        + "  - {name: a, participant: p, command: c, compensation: {command: undo}}\n"
        + "  - {name: b, participant: p, command: c, compensation: {command: undo}}\n"
    )
    dumped = definition.model_dump(mode="json")
    assert all("when" not in step for step in dumped["steps"])
    assert all(
        "participant" not in step["compensation"]
        for step in dumped["steps"]
        if step["compensation"]
    )


def test_the_graph_draws_groups_conditions_awaits_and_compensations() -> None:
    lines = mermaid(load_file(FIXTURE)).splitlines()
    for expected in [
        '    subgraph g1["book-travel (parallel)"]',
        '    s4[/"payment-authorized<br/>await payment.authorized"/]',
        '    start -->|"if: input.total >= 1000 && !has(input.trusted)"| s0',
        "    start -. else: skipped .-> f1",
        "    f1 --> s1",
        "    f1 --> s2",
        '    s2 -->|"if: steps[#quot;book-hotel#quot;].output.rooms > 0"| s3',
        "    s1 --> j1",
        "    s3 --> j1",
        "    j1 --> s4",
        '    c4["undo payment-authorized<br/>payments.void"]:::compensation',
        "    c4 -.-> c1",
        "    c4 -.-> c2",
        "    s1 -. fails .-> c1",
        "    s1 -. fails .-> c2",
        "    s5 -. fails .-> c4",
        "    c1 -.-> compensated",
    ]:
        assert expected in lines, expected
