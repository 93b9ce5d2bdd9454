"""The one message codec of the coordinator and the participant SDK (SPEC §3).

Every body and header either side reads goes through here, so both reject the same things
with the same reasons. A breach raises ``BadMessage``: its ``reason`` goes into the
``x-saga-rejection`` header of the dead-lettered copy, its ``category`` (a fixed word) labels
the metric.

Bodies are parsed with the standard library, plus checks, rather than with a faster parser:
the rules need each breach *named*, and the fast parsers turn an integer beyond 64 bits into
a float without a word. The checks, in order, each before the work it protects:

1. size (default 1 MiB), before anything is read;
2. strict UTF-8 (no encoded surrogates, no other encodings);
3. nesting depth (default 64), counted over the brackets outside strings, iteratively, before
   ``json.loads`` recurses: 100,000 nested arrays are refused without coming near Python's
   recursion limit. The fast path (fewer opening brackets than the limit) costs one count;
4. while parsing: ``NaN``/``Infinity`` refused, integers outside the signed 64-bit range
   refused (their digits counted before ``int()``, which would refuse 4,300 digits with an
   error of its own), numbers that overflow a double refused;
5. lone surrogates (``"\\ud800"`` escapes: valid JSON, but no UTF-8 can carry them, so
   MongoDB and every encoder downstream would fail): looked for only when an escape of one
   appears in the text.

Measured on this project's 2-core development machine (best of 3): a 182-byte reply,
9 µs against 5 µs for ``json.loads`` alone; 880 KB of flat strings, 3.1 ms against 2.4 ms;
780 KB holding 36,000 arrays and objects (the depth scan's worst case), 49 ms against 25 ms;
100,000 nested arrays refused in 0.1 s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from schemas.envelope import HEADER_ATTEMPT

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "MAX_ATTEMPT",
    "BadMessage",
    "Limits",
    "attempt_header",
    "decode_object",
    "header_text",
    "parse_idempotency_key",
]

DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_MAX_DEPTH = 64
#: The largest ``x-saga-attempt`` taken: a signed 32-bit integer (an AMQP ``long``).
MAX_ATTEMPT = 2**31 - 1

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_PAIR = re.compile(r"\[\]|\{\}")
_DIGITS = re.compile(r"[0-9]{1,10}", re.ASCII)
_RETRY_SUFFIX = re.compile(r"r([1-9][0-9]{0,9})", re.ASCII)


class BadMessage(Exception):
    """A message breaks the wire contract: dead-lettered with ``reason``, never retried.

    Args:
        reason: Why, as put in the ``x-saga-rejection`` header.
        category: A fixed word for the kind of breach (``too_large``, ``not_json``,
            ``too_deep``, ``bad_header``, …): a metric label, where free text would not do.
    """

    def __init__(self, reason: str, category: str = "bad_message") -> None:
        super().__init__(reason)
        self.reason = reason
        self.category = category


@dataclass(frozen=True, slots=True)
class Limits:
    """What a body may be: at most ``max_bytes`` long, nested at most ``max_depth`` deep."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH


def _depth(text: str, limit: int) -> int:
    """The nesting of arrays and objects in ``text`` up to ``limit + 1``, without recursion.

    Strings are cut out, then innermost ``[]`` and ``{}`` pairs are removed pass after pass
    (each pass one regular-expression substitution): the passes a well-formed text needs are
    its depth. Brackets that never pair up mean the text is not JSON. Where ``json.loads``
    and the string pattern here disagree on malformed text, the parser fails at that point,
    before it nests past what was counted up to it.
    """
    openers = text.count("[") + text.count("{")
    if openers <= limit:
        return openers  # an upper bound within the limit: no need to look closer
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for depth in range(limit + 1):
        if not brackets:
            return depth
        reduced = _PAIR.sub("", brackets)
        if len(reduced) == len(brackets):
            raise BadMessage("body is not JSON: its brackets do not pair up", "not_json")
        brackets = reduced
    return limit + 1


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _checked_int(digits: str) -> int:
    if len(digits.lstrip("-")) > 19:
        raise ValueError(f"integer of {len(digits.lstrip('-'))} digits is beyond 64 bits")
    value = int(digits)
    if not _INT_MIN <= value <= _INT_MAX:
        raise ValueError(f"integer {digits} is beyond 64 bits")
    return value


def _checked_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} overflows a double")
    return value


def _lone_surrogate(value: Any) -> str | None:
    """The first string (key or value) holding a lone surrogate, walked iteratively."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return item
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return None


def decode_object(body: bytes, limits: Limits = Limits()) -> dict[str, Any]:
    """The JSON object of a message body, or ``BadMessage`` saying what is wrong.

    Args:
        body: The raw body.
        limits: The size and depth limits.

    Returns:
        The decoded object.

    Raises:
        BadMessage: Over the size limit, not UTF-8, not JSON, nested too deep, holding
            ``NaN``/``Infinity``, an integer beyond 64 bits or a lone surrogate, or not an
            object.
    """
    if len(body) > limits.max_bytes:
        raise BadMessage(
            f"message of {len(body)} bytes is over the limit of {limits.max_bytes} bytes",
            "too_large",
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadMessage(f"body is not JSON: not UTF-8 ({exc})", "not_json") from None
    depth = _depth(text, limits.max_depth)
    if depth > limits.max_depth:
        raise BadMessage(f"body is nested deeper than the limit of {limits.max_depth}", "too_deep")
    try:
        value = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_int=_checked_int,
            parse_float=_checked_float,
        )
    except ValueError as exc:
        raise BadMessage(f"body is not JSON: {exc}", "not_json") from None
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        raise BadMessage(f"body is a JSON {kind}, not a JSON object", "not_object")
    if _SURROGATE_ESCAPE.search(text) and (found := _lone_surrogate(value)) is not None:
        raise BadMessage(
            f"body is not JSON: string {found[:40]!r} holds a lone surrogate", "not_json"
        )
    return value


def header_text(value: Any) -> str | None:
    """A header's text: ``str`` as is, ``bytes`` when UTF-8, anything else ``None``."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def attempt_header(headers: Mapping[str, Any]) -> int:
    """``x-saga-attempt``: an integer from 1 to ``MAX_ATTEMPT``, or its ASCII digits.

    Raises:
        BadMessage: Missing, a bool, negative or zero, too large, or text that is not
            1 to 10 ASCII digits (``"²"`` is a digit to ``int()``, not here).
    """
    value = headers.get(HEADER_ATTEMPT)
    if value is None:
        raise BadMessage(f"without the {HEADER_ATTEMPT} header", "missing_header")
    text = header_text(value)
    if text is not None and _DIGITS.fullmatch(text):
        value = int(text)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ATTEMPT:
        return value
    shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}…"
    raise BadMessage(
        f"{HEADER_ATTEMPT} is {shown}; expected an integer from 1 to {MAX_ATTEMPT}",
        "bad_header",
    )


def parse_idempotency_key(
    key: str, saga_id: str, step: str, kind: Literal["action", "compensation"]
) -> int:
    """The operator retry number in ``key``: 0 for ``<saga>:<step>:<kind>``, n for ``…:r<n>``.

    Raises:
        BadMessage: ``key`` is neither form for this saga, step and kind.
    """
    base = f"{saga_id}:{step}:{kind}"
    if key == base:
        return 0
    if key.startswith(base + ":") and (match := _RETRY_SUFFIX.fullmatch(key[len(base) + 1 :])):
        return int(match.group(1))
    raise BadMessage(
        f"x-idempotency-key is {key[:200]!r}; the headers name {base!r} or {base + ':r<n>'!r}",
        "bad_header",
    )
