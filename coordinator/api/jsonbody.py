"""What a JSON request body may hold: only what the coordinator can store and answer with.

Every JSON body of ``/v1`` is checked before the route reads it: integers must fit in 8
bytes (MongoDB's widest), numbers must be finite, strings and keys must be valid Unicode
(no lone surrogate such as ``"\\ud8d1"``), keys must not hold a NUL, and nesting must stay
within ``MAX_DEPTH`` levels. A body that breaks a rule is answered 422 with every problem
located (``input.items.3.qty``), never left to fail deeper as a 500, or as a 503 that
never ends. A body that is not JSON at all stays a 400, as before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from fastapi import Request

from coordinator.api.problems import ApiProblem
from schemas.codec import DEFAULT_MAX_DEPTH

__all__ = ["INT64_MAX", "INT64_MIN", "MAX_DEPTH", "check_json_body", "json_problems"]

MAX_DEPTH = DEFAULT_MAX_DEPTH
"""Levels of nesting a body may have: the messages' default limit."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"
_MAX_DIGITS = 20
"""Longer integer literals are not parsed at all (Python refuses beyond 4,300 digits)."""


class _HugeInt:
    """An integer literal too long to be worth parsing: reported, never converted."""

    def __init__(self, text: str) -> None:
        self.text = text


def _parse_int(text: str) -> int | _HugeInt:
    return _HugeInt(text) if len(text) > _MAX_DIGITS else int(text)


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _walk(value: Any) -> Iterator[tuple[tuple[str | int, ...], Any, bool]]:
    """Every ``(path, value, is_key)`` of ``value``, iteratively (no recursion limit)."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        yield path, item, False
        if isinstance(item, dict):
            for key, child in item.items():
                yield (*path, key), key, True
                stack.append(((*path, key), child))
        elif isinstance(item, list):
            stack.extend(((*path, index), child) for index, child in enumerate(item))


def _problem(value: Any, is_key: bool, depth: int) -> str | None:
    if depth > MAX_DEPTH and not is_key:
        return _TOO_DEEP
    if isinstance(value, _HugeInt) or (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not INT64_MIN <= value <= INT64_MAX
    ):
        return "the integer is out of range: integers must fit in 8 bytes (±9223372036854775807)"
    if isinstance(value, float) and not math.isfinite(value):
        return "the number is not finite"
    if isinstance(value, str):
        what = "the key" if is_key else "the string"
        if not _valid_unicode(value):
            return f"{what} is not valid Unicode (it holds a lone surrogate)"
        if is_key and "\x00" in value:
            return "the key holds a NUL character"
    return None


def json_problems(value: Any) -> list[dict[str, Any]]:
    """One located ``{field, location, message}`` per value a body must not hold."""
    problems: list[dict[str, Any]] = []
    for path, item, is_key in _walk(value):
        message = _problem(item, is_key, len(path))
        if message is None:
            continue
        field = ".".join(
            part if _valid_unicode(str(part)) else repr(part)[1:-1] for part in map(str, path)
        )
        problems.append({"field": field or None, "location": "body", "message": message})
        if len(problems) >= 20 or message == _TOO_DEEP:
            break
    return problems


def _is_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def check_json_body(request: Request) -> None:
    """Raise a 422 ``ApiProblem`` when the JSON body holds what the service cannot take."""
    if request.method in ("GET", "HEAD", "OPTIONS") or not _is_json(request):
        return
    body = await request.body()  # cached on the request: the route reads it again for free
    if not body:
        return
    try:
        value = json.loads(body, parse_int=_parse_int)
    except RecursionError:
        problems = [{"field": None, "location": "body", "message": _TOO_DEEP}]
    except ValueError:
        return  # not JSON: the route answers 400 with the parser's reason
    else:
        problems = json_problems(value)
    if problems:
        raise ApiProblem(
            422,
            "the request body holds values the service cannot take: see errors",
            slug="invalid-request",
            errors=problems,
        )
