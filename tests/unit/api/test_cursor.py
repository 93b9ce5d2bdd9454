"""The listing cursor: opaque, exact, and refused when not ours."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from coordinator.adapters.queries import InvalidCursor, decode_cursor, encode_cursor

T = datetime(2026, 3, 4, 5, 6, 7, 891_000, tzinfo=UTC)


def test_round_trip_is_exact() -> None:
    cursor = encode_cursor(T, "abc")
    assert "=" not in cursor and "abc" not in cursor
    assert decode_cursor(cursor) == (T, "abc")


def test_other_zones_and_naive_times_are_utc() -> None:
    plus_two = T.astimezone(timezone(timedelta(hours=2)))
    assert decode_cursor(encode_cursor(plus_two, "x")) == (T, "x")
    assert decode_cursor(encode_cursor(T.replace(tzinfo=None), "x")) == (T, "x")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        "",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"v": 2, "t": "2026-01-01T00:00:00+00:00", "id": "a"}').decode(),
        base64.urlsafe_b64encode(b'{"v": 1, "t": "yesterday", "id": "a"}').decode(),
        base64.urlsafe_b64encode(b'{"v": 1, "t": "2026-01-01T00:00:00", "id": 5}').decode(),
    ],
)
def test_foreign_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor, match="next_cursor"):
        decode_cursor(cursor)
