"""Hostile and malformed YAML is refused with a located error, never built or expanded."""

from __future__ import annotations

import pytest

from coordinator.definitions import LocatedError, load_definition
from coordinator.definitions.yamlsafe import read_yaml
from coordinator.errors import DefinitionError


def errors(text: str | bytes, **kwargs: int) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        load_definition(text, "saga.yaml", **kwargs)
    assert all(isinstance(error, LocatedError) for error in caught.value.errors)
    return [str(error) for error in caught.value.errors]


def test_billion_laughs_is_refused() -> None:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 9):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    found = errors("\n".join(lines))
    assert len(found) == 1
    assert found[0].startswith("saga.yaml:1: ")
    assert "expands to more than 10000 nodes" in found[0]


def test_recursive_alias_is_refused() -> None:
    assert "nesting deeper than 64 levels" in errors("&a [*a]")[0]


def test_deep_nesting_is_refused() -> None:
    assert errors("a: " + "[" * 200 + "]" * 200) == [
        "saga.yaml:1: <document>: nesting deeper than 64 levels"
    ]


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ("!!python/object/apply:os.system ['echo hi']", "!!python/object/apply:os.system"),
        ("!!python/name:os.system ''", "!!python/name:os.system"),
        ("!!binary aGVsbG8=", "!!binary"),
        ("!!set {a, b}", "!!set"),
        ("!!timestamp 2024-01-01", "!!timestamp"),
        ("!foo bar", "!foo"),
    ],
)
def test_tags_are_refused(value: str, tag: str) -> None:
    assert errors(f"name: x\ndescription: {value}\n") == [
        f"saga.yaml:2: description: YAML tag {tag} is not allowed; only plain text, numbers, "
        "true/false, null, mappings and lists are: remove the tag"
    ]


def test_standard_explicit_tags_are_allowed() -> None:
    data, _ = read_yaml("a: !!str 12\nb: !!int '7'\n")
    assert data == {"a": "12", "b": 7}


def test_scalars_follow_yaml_1_2_and_never_become_dates() -> None:
    data, _ = read_yaml("[2024-05-01, 2024-05-01T10:00:00Z, yes, no, on, true, 1:30, 017, 0x1f]")
    assert data == [
        "2024-05-01",
        "2024-05-01T10:00:00Z",
        "yes",
        "no",
        "on",
        True,
        "1:30",
        17,
        31,
    ]


def test_lines_are_recorded_per_path() -> None:
    _, lines = read_yaml("a: 1\nb:\n  - x\n  - c: 2\n")
    assert lines[("a",)] == 1
    assert lines[("b", 1)] == 4
    assert lines[("b", 1, "c")] == 4


def test_oversize_document_is_refused_before_parsing() -> None:
    text = "name: x\n" + "# padding\n" * 30_000 + "[unclosed"
    assert errors(text) == [
        f"saga.yaml:1: <document>: the document is {len(text)} bytes, over the limit of "
        "262144 bytes"
    ]
    assert errors("name: xyz", max_bytes=4) == [
        "saga.yaml:1: <document>: the document is 9 bytes, over the limit of 4 bytes"
    ]


def test_multiple_documents_are_refused() -> None:
    assert errors("name: a\n---\nname: b\n") == [
        "saga.yaml:2: <document>: more than one YAML document: a file holds exactly one "
        "saga definition"
    ]


@pytest.mark.parametrize(
    ("text", "shown"),
    [("- a\n- b\n", "list ['a', 'b']"), ("just text\n", "str 'just text'"), ("42", "int 42")],
)
def test_top_level_must_be_a_mapping(text: str, shown: str) -> None:
    assert errors(text) == [
        "saga.yaml:1: <document>: expected a mapping with name, version and steps at the top "
        f"level, got {shown}"
    ]


def test_empty_document() -> None:
    assert errors("# nothing\n") == [
        "saga.yaml:1: <document>: the document is empty: expected a saga definition mapping"
    ]


def test_syntax_error_is_located() -> None:
    assert errors("name: x\nsteps: [\n") == [
        "saga.yaml:3: <document>: invalid YAML: expected the node content, but found '<stream end>'"
    ]


def test_duplicate_and_non_text_keys() -> None:
    assert errors("name: a\nname: b\n") == [
        "saga.yaml:2: <document>: duplicate key 'name': a key may appear once per mapping"
    ]
    assert errors("name: a\n1: b\n") == [
        """saga.yaml:2: <document>: mapping key 1 is not text: quote it, e.g. '"1"'"""
    ]


def test_invalid_utf8() -> None:
    assert errors(b"name: a\nversion: \xff\n") == [
        "saga.yaml:2: <document>: the document is not UTF-8 text (invalid start byte)"
    ]


def test_too_many_plain_nodes_are_refused_while_composing() -> None:
    assert errors("x: [" + "1, " * 20_000 + "]") == [
        "saga.yaml:1: <document>: the document expands to more than 10000 nodes (aliases "
        "included); a saga definition is far smaller: remove repeated aliases and unneeded data"
    ]


def test_public_api_is_exported() -> None:
    import inspect

    import coordinator.definitions as package

    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert sorted(package.__all__) == sorted(public)
