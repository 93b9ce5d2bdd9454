"""Bearer-token authorization for ``/v1``.

``SAGA_API_TOKENS`` is a comma-separated list of ``token`` or ``token:scope`` entries, the
scope being ``read`` or ``write`` (a token without a scope may write). The part after the
last colon is the scope, so a token containing a colon must name its scope::

    SAGA_API_TOKENS="s3cr3t-ops:write,s3cr3t-dashboard:read,s3cr3t-ci"

With tokens configured, every ``/v1`` call needs ``Authorization: Bearer <token>``: 401 (with
``WWW-Authenticate: Bearer``) without a token or with an unknown one, 403 when a read token
calls a write endpoint (any method but GET, HEAD and OPTIONS). Without tokens the API is
open; the service refuses to start open on a non-loopback address
(``refuse_anonymous_bind``) unless ``SAGA_API_ALLOW_ANONYMOUS=true`` says so on purpose, and
then ``warn_if_exposed`` logs a warning.

Tokens are compared in constant time: every configured token is compared (as sha256
digests, so lengths leak nothing either) whatever the outcome.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

from coordinator.api.context import get_context
from coordinator.api.jsonbody import check_json_body
from coordinator.api.problems import ApiProblem

__all__ = [
    "AuthorizedRoute",
    "Scope",
    "TokenTable",
    "bearer_scheme",
    "check_token",
    "parse_api_tokens",
    "refuse_anonymous_bind",
    "warn_if_exposed",
]

logger = logging.getLogger(__name__)

Scope = Literal["read", "write"]
_SCOPES: frozenset[str] = frozenset({"read", "write"})
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class TokenTable:
    """The configured tokens (as digests) and their scopes; empty means open."""

    entries: tuple[tuple[bytes, Scope], ...] = ()

    @property
    def open(self) -> bool:
        return not self.entries

    def scope_of(self, token: str) -> Scope | None:
        """The scope of ``token``, or None; compares against every entry, in constant time."""
        candidate = _digest(token)
        found: Scope | None = None
        for digest, scope in self.entries:
            if hmac.compare_digest(candidate, digest):
                found = scope
        return found


def parse_api_tokens(value: str | Iterable[str] | Mapping[str, str] | None) -> TokenTable:
    """Parse ``SAGA_API_TOKENS``: ``"tok1:write,tok2:read,tok3"`` (no scope: write).

    Also accepts a list of such entries or a ``{token: scope}`` mapping. Raises
    ``ValueError`` naming the entry for an unknown scope or an empty token.
    """
    if value is None:
        return TokenTable()
    pairs: list[tuple[str, str]] = []
    if isinstance(value, Mapping):
        pairs = [(str(token), str(scope)) for token, scope in value.items()]
    else:
        entries = value.split(",") if isinstance(value, str) else list(value)
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            token, colon, scope = entry.rpartition(":")
            pairs.append((token, scope) if colon else (entry, "write"))
    table: dict[str, Scope] = {}
    for position, (token, scope) in enumerate(pairs, start=1):
        token = token.strip()
        scope = scope.strip().lower()
        if not token:
            raise ValueError(f"SAGA_API_TOKENS entry {position}: the token is empty")
        if scope not in _SCOPES:
            raise ValueError(
                f"SAGA_API_TOKENS entry {position}: unknown scope {scope!r}; use "
                "`token:read` or `token:write` (a token without a scope may write)"
            )
        table[token] = "read" if scope == "read" else "write"
    return TokenTable(tuple((_digest(token), scope) for token, scope in table.items()))


def warn_if_exposed(host: str, tokens: TokenTable | str | None) -> bool:
    """Log a warning and return True when ``host`` is beyond loopback and no token is set."""
    table = tokens if isinstance(tokens, TokenTable) else parse_api_tokens(tokens)
    if not table.open or _is_loopback(host):
        return False
    logger.warning(
        "the REST API listens on %s without API tokens: anyone who can reach it can start, "
        "cancel and retry sagas; set SAGA_API_TOKENS (e.g. 'secret1:write,secret2:read')",
        host or "all interfaces",
    )
    return True


def refuse_anonymous_bind(host: str, tokens: TokenTable, *, allow_anonymous: bool) -> None:
    """Raise ``ValueError`` when ``host`` is beyond loopback, no token is configured and
    anonymous access was not allowed on purpose; with it allowed, log a warning."""
    if tokens.open and not _is_loopback(host) and not allow_anonymous:
        raise ValueError(
            f"refusing to serve the REST API on {host or 'all interfaces'} without API "
            "tokens: set SAGA_API_TOKENS (e.g. 'secret1:write,secret2:read'), bind to "
            "127.0.0.1 (SAGA_HTTP_HOST), or set SAGA_API_ALLOW_ANONYMOUS=true to serve it "
            "open on purpose"
        )
    warn_if_exposed(host, tokens)


def _is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(
        401, detail, slug="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="saga"'}
    )


def check_token(request: Request) -> Scope | None:
    """The token's scope (None when the API is open); raises a 401 or 403 ``ApiProblem``."""
    table = get_context(request).tokens
    if table.open:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("this endpoint needs an `Authorization: Bearer <token>` header")
    scope = table.scope_of(token)
    if scope is None:
        raise _unauthorized("the bearer token is not known")
    if scope == "read" and request.method not in _READ_METHODS:
        raise ApiProblem(
            403, "this token may only read; the call needs a write token", slug="forbidden"
        )
    return scope


class AuthorizedRoute(APIRoute):
    """A route that checks the token before anything else, even before reading the body,
    so that a caller without a valid token learns nothing from validation errors; then
    what a JSON body holds (``check_json_body``), before the route parses it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authorized(request: Request) -> Response:
            check_token(request)
            await check_json_body(request)
            return await handler(request)

        return authorized


bearer_scheme = Security(HTTPBearer(auto_error=False, description="A token from SAGA_API_TOKENS."))
"""Declares the bearer scheme in OpenAPI (``/docs``); ``AuthorizedRoute`` does the check."""
