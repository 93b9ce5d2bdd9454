"""Load and validate saga definitions, reporting every problem with its file, line and field.

The pipeline: size limit → UTF-8 → safe YAML (``yamlsafe``: no tags, bounded expansion,
line of every value) → per-field rules (the ``schemas.definition`` models) and cross-step
rules (``checks``) → ``SagaDefinition``. Each problem becomes a ``LocatedError`` whose
``str()`` is ``file:line: field: message``; they are raised together, sorted by line, in
one ``DefinitionError``.

``SagaDefinition.model_validate`` alone checks only the per-field rules: anything that
accepts definitions from users (files, the REST API) goes through ``load_definition``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from coordinator.definitions.checks import check_definition
from coordinator.definitions.yamlsafe import Path, YamlProblem, read_yaml
from coordinator.errors import DefinitionError
from schemas.definition import (
    EVENT_PATTERN,
    NAME_PATTERN,
    STEP_KINDS,
    WORD_PATTERN,
    SagaDefinition,
)

__all__ = ["DEFAULT_MAX_BYTES", "MAX_NODES", "LocatedError", "load_definition", "load_file"]

DEFAULT_MAX_BYTES = 256 * 1024
MAX_NODES = 10_000
DOCUMENT = "<document>"  # the field of problems with the document as a whole

_PATTERN_HINTS = {
    NAME_PATTERN: "use lowercase letters, digits and '-', starting with a letter, "
    "at most 63 characters (e.g. order-fulfillment)",
    WORD_PATTERN: "use one word of letters, digits, '_' and '-', starting with a letter, "
    "at most 63 characters (no dots or wildcards)",
    EVENT_PATTERN: "use dot-separated words of letters, digits, '_' and '-' (e.g. order.placed)",
}


@dataclass(frozen=True, slots=True)
class LocatedError:
    """One problem of a definition: where it is and what to do about it."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


def field_path(loc: Path) -> str:
    """``("steps", 1, "compensation", "command")`` → ``steps[1].compensation.command``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or DOCUMENT


def _line(lines: dict[Path, int], loc: Path) -> int:
    """The line of ``loc``, or of its nearest parent that exists in the document."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _strip_tags(loc: tuple[Any, ...]) -> Path:
    """A pydantic location without the tags of the step kinds (``steps[0].command-step``)."""
    return tuple(
        part
        for i, part in enumerate(loc)
        if not (part in STEP_KINDS and i > 0 and isinstance(loc[i - 1], int))
    )


def _unwrap(current: Any) -> Any:
    """The type inside ``Annotated``/``Optional`` wrappers (lists and dicts stay)."""
    while get_origin(current) not in (None, list, dict):
        current = next((arg for arg in get_args(current) if arg is not type(None)), None)
    return current


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that validates the mapping at ``loc`` (for listing its allowed keys)."""
    current: Any = SagaDefinition
    for i, part in enumerate(loc):
        current = _unwrap(current)
        if isinstance(part, str) and part in STEP_KINDS and i and isinstance(loc[i - 1], int):
            current = STEP_KINDS[part]
        elif isinstance(part, int):
            current = get_args(current)[0] if get_origin(current) is list else None
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            current = next(
                (
                    info.annotation
                    for name, info in current.model_fields.items()
                    if part in (name, info.alias)
                ),
                None,
            )
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _keys(model: type[BaseModel]) -> str:
    return ", ".join(info.alias or name for name, info in model.model_fields.items())


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error: ErrorDetails) -> str:
    loc = _strip_tags(tuple(error["loc"]))
    kind, value = error["type"], error.get("input")
    if kind == "missing":
        return f"missing required key {loc[-1]!r}"
    if kind == "extra_forbidden":
        model = _model_at(tuple(error["loc"])[:-1])
        allowed = _keys(model) if model is not None else "none"
        return f"unknown key {loc[-1]!r}; allowed keys: {allowed}"
    if kind == "value_error":
        return error["msg"].removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        pattern = str(error.get("ctx", {}).get("pattern", ""))
        hint = _PATTERN_HINTS.get(pattern, f"it must match {pattern}")
        return f"invalid {loc[-1]} {_shown(value)}: {hint}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {_shown(value)}"
    if isinstance(value, str | int | float | bool) or value is None:
        return f"{error['msg']}, got {_shown(value)}"
    return str(error["msg"])


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlProblem(line, f"the document is not UTF-8 text ({exc.reason})") from exc


def load_definition(
    text: str | bytes, source: str = "<input>", *, max_bytes: int = DEFAULT_MAX_BYTES
) -> SagaDefinition:
    """Parse and validate one saga definition (YAML or JSON).

    Args:
        text: The document.
        source: The name used as ``file`` in errors, usually the path.
        max_bytes: Larger documents are refused before they are parsed.

    Returns:
        The validated definition.

    Raises:
        DefinitionError: With every problem of the document as a ``LocatedError``.
    """
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if len(raw) > max_bytes:
        message = f"the document is {len(raw)} bytes, over the limit of {max_bytes} bytes"
        raise DefinitionError([LocatedError(source, 1, DOCUMENT, message)])
    try:
        data, lines = read_yaml(_decode(raw), max_nodes=MAX_NODES)
    except YamlProblem as exc:
        located = LocatedError(source, exc.line, field_path(exc.path), exc.message)
        raise DefinitionError([located]) from exc
    if not isinstance(data, dict):
        message = (
            f"expected a mapping with name, version and steps at the top level, "
            f"got {type(data).__name__} {_shown(data)}"
        )
        raise DefinitionError([LocatedError(source, _line(lines, ()), DOCUMENT, message)])
    problems: list[tuple[Path, str]] = []
    definition: SagaDefinition | None = None
    try:
        definition = SagaDefinition.model_validate(data)
    except ValidationError as exc:
        problems += [(_strip_tags(tuple(error["loc"])), _message(error)) for error in exc.errors()]
    problems += check_definition(data)
    if definition is None or problems:
        errors = [
            LocatedError(source, _line(lines, loc), field_path(loc), message)
            for loc, message in problems
        ]
        errors.sort(key=lambda error: error.line)
        raise DefinitionError(list(errors))
    return definition


def load_file(
    path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> SagaDefinition:
    """Read and validate a definition file; see ``load_definition``.

    Raises:
        DefinitionError: On any problem, including a file that cannot be read.
    """
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(max_bytes + 1)
    except OSError as exc:
        message = f"cannot read the file: {exc.strerror or exc}"
        raise DefinitionError([LocatedError(source, 1, DOCUMENT, message)]) from exc
    if len(raw) > max_bytes:
        message = f"the file is larger than the limit of {max_bytes} bytes"
        raise DefinitionError([LocatedError(source, 1, DOCUMENT, message)])
    return load_definition(raw, source, max_bytes=max_bytes)
