"""How handler exceptions map to the reply's ``error`` object."""

from __future__ import annotations

import pytest

from participants import RetryableError, StepError
from participants._errors import error_for
from participants._output import failed, succeeded
from schemas.envelope import ReplyError


def test_step_error_is_not_retryable() -> None:
    error = error_for(StepError("card_declined", "the issuer said no"))
    assert error == ReplyError(code="card_declined", message="the issuer said no", retryable=False)


def test_retryable_error() -> None:
    error = error_for(RetryableError("processor_unavailable"))
    assert error == ReplyError(code="processor_unavailable", message="", retryable=True)


def test_any_other_exception_is_retryable_under_its_type_name() -> None:
    error = error_for(KeyError("sku"))
    assert error.code == "KeyError"
    assert error.retryable is True
    assert "sku" in error.message


def test_codes_must_not_be_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        StepError("")


def test_reply_bodies() -> None:
    assert succeeded() == {"status": "succeeded", "output": {}}
    assert failed(ReplyError(code="x", message="y", retryable=True)) == {
        "status": "failed",
        "error": {"code": "x", "message": "y", "retryable": True},
    }
