"""``HEAD`` on every ``GET`` route: the same status and headers, no body (RFC 9110 §9.3.2).

FastAPI routes a ``HEAD`` request only to routes declared for it, so without this every
``HEAD`` — a load balancer's or a monitoring probe's — got 405. The request goes on as a
``GET``; what the application answers keeps its status and headers (``Content-Length``
included, as RFC 9110 asks) and loses its body.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HeadAsGetMiddleware"]


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)
