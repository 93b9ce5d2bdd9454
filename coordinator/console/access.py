"""Who may read and act in the console: the API's tokens, carried in a cookie.

With ``SAGA_API_TOKENS`` set, the console asks for a token once (the sign-in form) and
keeps it in an ``HttpOnly``, ``SameSite=Strict`` cookie scoped to ``/ui``; reading needs a
read or write token, every action a write token, exactly as on ``/v1``. Without tokens the
console is open, like the API.

Every form post must come from the console's own origin: a post whose ``Origin`` (or,
without it, ``Sec-Fetch-Site``) names another site is refused, so that another page open
in the same browser cannot make it cancel or retry sagas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from fastapi import Request

from coordinator.api.auth import Scope, TokenTable

__all__ = [
    "COOKIE",
    "Access",
    "Refusal",
    "cross_site",
    "read_access",
    "safe_next",
    "write_refusal",
]

COOKIE = "saga_console_token"


@dataclass(frozen=True, slots=True)
class Access:
    """What the request may do; ``scope`` is None when the console is open."""

    open: bool
    scope: Scope | None

    @property
    def can_read(self) -> bool:
        return self.open or self.scope is not None

    @property
    def can_write(self) -> bool:
        return self.open or self.scope == "write"

    @property
    def signed_in(self) -> bool:
        return self.scope is not None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an action is refused, as the page says it; ``status`` is the HTTP status."""

    status: Literal[401, 403]
    message: str


def read_access(request: Request, tokens: TokenTable) -> Access:
    if tokens.open:
        return Access(open=True, scope=None)
    token = request.cookies.get(COOKIE, "")
    return Access(open=False, scope=tokens.scope_of(token) if token else None)


def write_refusal(access: Access) -> Refusal | None:
    """None when ``access`` may act; else why not."""
    if access.can_write:
        return None
    if access.scope == "read":
        return Refusal(403, "Your token may only read: this action needs a write token.")
    return Refusal(401, "This action needs a write token: sign in with one first.")


def cross_site(request: Request) -> bool:
    """True when a form post comes from a page of another origin."""
    origin = request.headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        return origin == "null" or parts.netloc != request.headers.get("host", "")
    return request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


def safe_next(value: str | None) -> str:
    """A path inside the console to go back to (never another site)."""
    if value and value.startswith("/ui") and not value.startswith("//"):
        return value
    return "/ui"
