"""The operator console at ``/ui`` (SPEC §8): server-rendered pages over the REST API's
context, with a little progressive JavaScript (htmx) for live refresh.

``install_console`` goes into ``create_app``'s ``install`` list next to
``install_rest_api``, with the same ``ApiContext``::

    install=[
        partial(install_rest_api, context=context),
        partial(install_console, context=context, counts=queries.in_flight),
    ]

The static assets are the console's own stylesheet and, in ``static/vendor/``, htmx as
installed from the npm registry by ``scripts/bootstrap`` (``console/package.json``). When
htmx is missing the console still works (reload links instead of live refresh), and a log
line says so at start-up. Nothing is fetched at run time.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from coordinator.api.context import ApiContext
from coordinator.console import actions, pages
from coordinator.console.views import HERE, STATE_KEY, ConsoleContext, Counts, make_templates

__all__ = ["HTMX_PATH", "install_console"]

log = logging.getLogger(__name__)

HTMX_PATH = HERE / "static" / "vendor" / "htmx.min.js"


def install_console(app: FastAPI, context: ApiContext, *, counts: Counts | None = None) -> None:
    """Serve the console under ``/ui`` (pages, form posts, ``/ui/static``)."""
    htmx = HTMX_PATH.is_file()
    if htmx:
        log.info("console at /ui, with live refresh (htmx from %s)", HTMX_PATH.parent)
    else:
        log.warning(
            "console at /ui without live refresh: %s is missing; run scripts/bootstrap "
            "(it installs htmx from the npm registry with npm ci) to add it",
            HTMX_PATH,
        )
    setattr(
        app.state,
        STATE_KEY,
        ConsoleContext(api=context, counts=counts, templates=make_templates(), htmx=htmx),
    )
    app.include_router(pages.router)
    app.include_router(actions.router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")
