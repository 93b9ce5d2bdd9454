"""Pure parts of ``schemas.consuming``: the try count and headers that can be sent again."""

from __future__ import annotations

from typing import Any

import pytest
from pamqp import decode, encode

from schemas.consuming import publishable, tries_of


def test_received_bytes_headers_can_be_published_again() -> None:
    # A long string that is not UTF-8 is decoded as bytes, which the encoder refuses.
    received = {"x-saga-step": b"\xff", "nested": {"a": [b"\xfe", 1]}, "n": 2, "d": 1e300}
    with pytest.raises(TypeError):
        encode.field_table({"x-saga-step": b"\xff"})
    with pytest.raises(OverflowError):  # a double that arrived, packed back as a float
        encode.field_table({"d": 1e300})
    _, again = decode.field_table(encode.field_table(publishable(received)))
    assert again == {
        "x-saga-step": bytearray(b"\xff"),
        "nested": {"a": [bytearray(b"\xfe"), 1]},
        "n": 2,
        "d": "1e+300",
    }


@pytest.mark.parametrize(
    ("headers", "tries"),
    [
        (None, 0),
        ({}, 0),
        ({"x-saga-tries": 3}, 3),
        ({"x-saga-tries": True}, 0),
        ({"x-saga-tries": "2"}, 0),
        ({"x-saga-tries": -1}, 0),
        ({"x-saga-tries": 10**12}, 0),
    ],
)
def test_tries_of(headers: dict[str, Any] | None, tries: int) -> None:
    assert tries_of(headers) == tries
