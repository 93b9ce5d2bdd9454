"""Token parsing, scope checks and the exposure warning, without any server."""

from __future__ import annotations

import logging

import pytest

from coordinator.api.auth import parse_api_tokens, refuse_anonymous_bind, warn_if_exposed


def test_parse_scopes_and_default_write() -> None:
    table = parse_api_tokens(" ops:write , dash:read,ci ,, a:b:read")
    assert table.scope_of("ops") == "write"
    assert table.scope_of("dash") == "read"
    assert table.scope_of("ci") == "write"
    assert table.scope_of("a:b") == "read"
    assert table.scope_of("a") is None
    assert table.scope_of("") is None
    assert not table.open


@pytest.mark.parametrize("value", [None, "", " , "])
def test_no_tokens_means_open(value: str | None) -> None:
    assert parse_api_tokens(value).open


def test_lists_and_mappings() -> None:
    assert parse_api_tokens(["x:read", "y"]).scope_of("y") == "write"
    assert parse_api_tokens({"z": "read"}).scope_of("z") == "read"


@pytest.mark.parametrize(
    ("value", "message"),
    [("tok:admin", "unknown scope 'admin'"), (":read", "the token is empty")],
)
def test_bad_entries_are_named(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_api_tokens(f"good,{value}")


@pytest.mark.parametrize(
    ("host", "tokens", "warned"),
    [
        ("127.0.0.1", None, False),
        ("localhost", None, False),
        ("::1", None, False),
        ("[::1]", None, False),
        ("0.0.0.0", None, True),
        ("", None, True),
        ("10.1.2.3", None, True),
        ("example.org", "", True),
        ("0.0.0.0", "secret", False),
    ],
)
def test_warn_if_exposed(
    host: str, tokens: str | None, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="coordinator.api.auth"):
        assert warn_if_exposed(host, tokens) is warned
    assert bool(caplog.records) is warned
    if warned:
        assert "SAGA_API_TOKENS" in caplog.text


@pytest.mark.parametrize(
    ("host", "tokens", "allowed", "refused"),
    [
        ("0.0.0.0", None, False, True),
        ("10.1.2.3", "", False, True),
        ("0.0.0.0", None, True, False),
        ("0.0.0.0", "secret", False, False),
        ("127.0.0.1", None, False, False),
        ("::1", None, False, False),
    ],
)
def test_an_open_api_beyond_loopback_is_refused_unless_allowed(
    host: str, tokens: str | None, allowed: bool, refused: bool
) -> None:
    table = parse_api_tokens(tokens)
    if refused:
        with pytest.raises(ValueError, match="SAGA_API_ALLOW_ANONYMOUS=true"):
            refuse_anonymous_bind(host, table, allow_anonymous=allowed)
    else:
        refuse_anonymous_bind(host, table, allow_anonymous=allowed)
