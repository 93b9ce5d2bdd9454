"""Hostile-input-safe YAML reading that remembers where every value came from.

Theory of operation: PyYAML only *scans, parses and composes* the text into a node graph
(linear in the document size: an alias is one shared node, never a copy). We then walk that
graph ourselves instead of handing it to a constructor, which lets us:

- refuse every explicit tag except the standard scalar, mapping and sequence tags, so no
  ``!!python/…``, ``!!binary``, ``!!set``, ``!!timestamp`` or custom ``!foo`` is ever built;
- count nodes as they are expanded (aliases included) and stop at ``max_nodes``, which rejects
  a billion-laughs document after a few thousand steps instead of exhausting memory;
- refuse duplicate mapping keys and non-text keys;
- record the 1-based line of every value (for mapping entries, the line of the key) under
  its path, e.g. ``("steps", 1, "compensation", "command")``.

Implicit scalars follow the YAML 1.2 core schema rather than PyYAML's YAML 1.1 rules:
``true``/``false`` are booleans but ``yes``/``no``/``on``/``off`` stay text, ``1:30`` is
text (not the sexagesimal 90), ``017`` is 17, and dates and timestamps such as
``2024-05-01`` stay text: nothing ever becomes a ``datetime``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader, ReaderError
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

__all__ = ["Path", "YamlProblem", "read_yaml"]

Path = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
MAP, SEQ = _TAG + "map", _TAG + "seq"
MAX_DEPTH = 64
_KEY = "<key>"  # path marker while reading a mapping key


class YamlProblem(Exception):
    """A document that cannot be read: ``line`` (1-based), ``path`` and ``message``."""

    def __init__(self, line: int, message: str, path: Path = ()) -> None:
        self.line = line
        self.path = path
        self.message = message
        super().__init__(f"line {line}: {message}")


def _too_many(max_nodes: int) -> str:
    return (
        f"the document expands to more than {max_nodes} nodes (aliases included); a saga "
        "definition is far smaller: remove repeated aliases and unneeded data"
    )


class _CoreResolver(BaseResolver):
    """Implicit scalar resolution per the YAML 1.2 core schema (see the module header)."""


_IMPLICIT = {
    BOOL: (r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    INT: (r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    FLOAT: (
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    NULL: (r"^(?:~|null|Null|NULL|)$", "~nN"),
}
for _tag, (_pattern, _first) in _IMPLICIT.items():
    _first_chars: list[str | None] = [*_first, ""] if _tag == NULL else list(_first)
    _CoreResolver.add_implicit_resolver(_tag, re.compile(_pattern), _first_chars)


class _Loader(Reader, Scanner, Parser, Composer, _CoreResolver):
    """Composes nodes only; nesting deeper than ``MAX_DEPTH`` is refused while composing."""

    def __init__(self, text: str, max_nodes: int) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _CoreResolver.__init__(self)
        self.depth = 0
        self.composed = 0
        self.max_nodes = max_nodes

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self.depth += 1
        self.composed += 1
        try:
            if self.depth > MAX_DEPTH or self.composed > self.max_nodes:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                if self.depth > MAX_DEPTH:
                    raise YamlProblem(mark.line + 1, f"nesting deeper than {MAX_DEPTH} levels")
                raise YamlProblem(mark.line + 1, _too_many(self.max_nodes))
            node: Node | None = super().compose_node(parent, index)
            return node
        finally:
            self.depth -= 1


def _scalar(node: ScalarNode, path: Path) -> Any:
    value: str = node.value
    if node.tag == STR:
        return value
    if not re.match(_IMPLICIT[node.tag][0], value):
        short = node.tag.removeprefix(_TAG)
        raise YamlProblem(node.start_mark.line + 1, f"{value!r} is not a valid {short}", path)
    if node.tag == NULL:
        return None
    if node.tag == BOOL:
        return value.lower() == "true"
    if node.tag == INT:
        digits = value.lstrip("+")
        for prefix, base in (("0x", 16), ("0o", 8)):
            if digits.startswith(prefix):
                return int(digits[2:], base)
        return int(digits, 10)
    if node.tag == FLOAT:
        lowered = value.lower()
        if lowered.endswith(".inf"):
            return float("-inf") if lowered.startswith("-") else float("inf")
        if lowered == ".nan":
            return float("nan")
        return float(value)
    raise AssertionError(node.tag)  # _Reader._build refuses other tags first


@dataclass
class _Reader:
    max_nodes: int
    lines: dict[Path, int] = field(default_factory=dict)
    count: int = 0

    def build(self, node: Node, path: Path, line: int) -> Any:
        self.count += 1
        if self.count > self.max_nodes:
            raise YamlProblem(node.start_mark.line + 1, _too_many(self.max_nodes), path)
        if path[-1:] != (_KEY,):
            self.lines.setdefault(path, line)
        if len(path) > MAX_DEPTH:
            raise YamlProblem(line, f"nesting deeper than {MAX_DEPTH} levels", path)
        allowed: tuple[str, ...] = (MAP,) if isinstance(node, MappingNode) else (SEQ,)
        if isinstance(node, ScalarNode):
            allowed = (STR, INT, FLOAT, BOOL, NULL)
        if node.tag not in allowed:
            tag = node.tag.replace(_TAG, "!!", 1)
            raise YamlProblem(
                node.start_mark.line + 1,
                f"YAML tag {tag} is not allowed; only plain text, numbers, true/false, "
                "null, mappings and lists are: remove the tag",
                path,
            )
        if isinstance(node, ScalarNode):
            return _scalar(node, path)
        if isinstance(node, SequenceNode):
            return [
                self.build(item, (*path, index), item.start_mark.line + 1)
                for index, item in enumerate(node.value)
            ]
        assert isinstance(node, MappingNode)
        return self._mapping(node, path)

    def _mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            key = self.build(key_node, (*path, _KEY), key_line)
            if not isinstance(key, str):
                raise YamlProblem(
                    key_line, f"mapping key {key!r} is not text: quote it, e.g. '\"{key}\"'", path
                )
            if key in result:
                raise YamlProblem(
                    key_line, f"duplicate key {key!r}: a key may appear once per mapping", path
                )
            result[key] = self.build(value_node, (*path, key), key_line)
        return result


def read_yaml(text: str, *, max_nodes: int = 10_000) -> tuple[Any, dict[Path, int]]:
    """Read one YAML (or JSON) document safely.

    Args:
        text: The document.
        max_nodes: The most nodes the document may expand to, aliases included.

    Returns:
        The plain data (dicts, lists, str, int, float, bool, None) and a map from each
        value's path to its 1-based line.

    Raises:
        YamlProblem: On a syntax error, a refused tag, too many nodes, deep nesting,
            duplicate or non-text keys, an empty stream or more than one document.
    """
    loader: _Loader | None = None
    try:
        loader = _Loader(text, max_nodes)
        if not loader.check_node():
            raise YamlProblem(1, "the document is empty: expected a saga definition mapping")
        root = loader.get_node()
        assert root is not None  # check_node() said there is one
        if loader.check_node():
            line = loader.peek_event().start_mark.line + 1  # type: ignore[no-untyped-call]
            raise YamlProblem(
                line, "more than one YAML document: a file holds exactly one saga definition"
            )
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlProblem(line, f"invalid YAML: {exc.problem or exc.context}") from exc
    except ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise YamlProblem(line, f"invalid YAML: {str(exc).splitlines()[0]}") from exc
    except yaml.YAMLError as exc:
        raise YamlProblem(1, f"invalid YAML: {exc}") from exc
    finally:
        if loader is not None:
            loader.dispose()
    reader = _Reader(max_nodes=max_nodes)
    data = reader.build(root, (), root.start_mark.line + 1)
    return data, reader.lines
