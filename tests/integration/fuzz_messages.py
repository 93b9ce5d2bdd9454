"""Hypothesis strategies for hostile AMQP messages: bodies and headers of every class the
codec must refuse, mixed with well-formed ones."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

#: The body size limit the fuzzed consumers run with (small: oversize bodies stay cheap).
MAX_BYTES = 4096

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
good_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


reply_bodies = st.one_of(
    st.fixed_dictionaries({"status": st.just("succeeded"), "output": good_objects}),
    st.fixed_dictionaries(
        {
            "status": st.just("failed"),
            "error": st.fixed_dictionaries(
                {"code": st.text(max_size=12), "retryable": st.booleans()}
            ),
        }
    ),
    st.fixed_dictionaries({"status": st.text(max_size=10)}),
).map(_dumps)

hostile_bodies = st.one_of(
    st.integers(60, 100_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(60, 50_000).map(lambda n: b'{"a":' + b"[" * n + b"]" * n + b"}"),
    st.integers(2, 50_000).map(lambda n: b'{"a":' + b"{" * n),
    st.sampled_from(
        [
            b'{"a":"\\ud800"}',
            b'{"\\udbff":1}',
            b'{"a":["x","\\udc00z"]}',
            b'{"a":NaN}',
            b'{"a":Infinity}',
            b'{"a":-Infinity}',
            b'{"a":1e999}',
            b"\xed\xa0\x80",
            b"null",
            b"[]",
            b'"text"',
            b"",
        ]
    ),
    st.integers(19, 6000).map(lambda n: b'{"a":-' + b"9" * n + b"}"),
    st.integers(MAX_BYTES, 3 * MAX_BYTES).map(lambda n: b'{"p":"' + b"x" * n + b'"}'),
    st.binary(max_size=40),
    good_objects.map(_dumps),
)

bodies = st.one_of(reply_bodies, hostile_bodies)

attempts = st.one_of(
    st.integers(1, 4),
    st.integers(-(2**40), 0),
    st.integers(2**31, 2**62),
    st.booleans(),
    st.sampled_from(["²", "9" * 5000, "1", "07", " 3", "", "1.0", "٣"]),
    st.binary(max_size=4).map(bytearray),
    # What a publisher can send: RabbitMQ closes the connection of one that sends an
    # infinite or NaN float header (INTERNAL_ERROR), so none reaches a consumer.
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.none(),
)


def text_or_junk(good: str) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.just(good),
        st.just(good),
        st.text(max_size=10),
        st.binary(max_size=6).map(bytearray),
        st.integers(-5, 5),
        st.none(),
    )


@st.composite
def contract_headers(draw: st.DrawFn, saga_ids: list[str], step: str) -> dict[str, Any]:
    """Headers of a reply or command: mostly right, any of them wrong or missing."""
    saga_id = draw(st.sampled_from(saga_ids))
    kind = draw(text_or_junk("action"))
    headers: dict[str, Any] = {
        "x-saga-id": draw(text_or_junk(saga_id)),
        "x-saga-step": draw(text_or_junk(step)),
        "x-saga-kind": kind,
        "x-saga-attempt": draw(attempts),
        "x-idempotency-key": draw(
            st.one_of(
                st.just(f"{saga_id}:{step}:action"),
                st.integers(1, 3).map(lambda n: f"{saga_id}:{step}:action:r{n}"),
                st.text(max_size=12),
                st.none(),
            )
        ),
        "x-deadline": draw(
            st.one_of(st.none(), st.just("2999-01-01T00:00:00Z"), st.text(max_size=6))
        ),
    }
    return {name: value for name, value in headers.items() if value is not None}
