"""The ``sagas`` subcommands: list, show, history, cancel, retry, send-event.

Each prints a table or a timeline for people, or the API's JSON with ``--json`` for scripts.
Exit status: 0 on success, 1 when the API refused or could not be reached (the reason on
stderr), 2 for a usage error (argparse).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from coordinator.client.api import DEFAULT_URL, ApiClient, ApiError
from coordinator.client.tables import table, when
from coordinator.timeline import entry_lines, header_lines, timeline

__all__ = ["add_sagas_parser", "run_sagas"]

#: ``SagaStatus``'s values, spelled out: importing the type loads the engine (a fifth of a
#: second) on every command line.
STATUSES = ("running", "compensating", "completed", "compensated", "failed")


def add_sagas_parser(sub: Any) -> None:
    """Add ``sagas`` and its subcommands to the top-level subparsers ``sub``."""
    sagas = sub.add_parser(
        "sagas",
        help="list, read, cancel and retry sagas over the REST API",
        description="The REST API from a terminal. The service's URL and token come from "
        "--url/--token, or SAGA_API_URL/SAGA_API_TOKEN.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("SAGA_API_URL", DEFAULT_URL),
        help=f"the service (default: $SAGA_API_URL or {DEFAULT_URL})",
    )
    common.add_argument(
        "--token",
        default=os.environ.get("SAGA_API_TOKEN"),
        help="a bearer token (default: $SAGA_API_TOKEN)",
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON")
    actions = sagas.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", parents=[common], help="sagas, newest first")
    listing.add_argument("--definition", help="only this definition")
    listing.add_argument("--status", choices=STATUSES, help="only this status")
    listing.add_argument("--key", help="only this business key")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (1-500)")
    listing.add_argument("--cursor", help="next_cursor of the previous page")

    for name, help_text in (
        ("show", "a saga: its steps and its timeline"),
        ("history", "a saga's history, oldest first"),
        ("retry", "resume a failed saga where it stopped"),
    ):
        actions.add_parser(name, parents=[common], help=help_text).add_argument("id")
    cancel = actions.add_parser("cancel", parents=[common], help="cancel a running saga")
    cancel.add_argument("id")
    cancel.add_argument("--reason", required=True, help="why (kept in the saga's history)")
    send = actions.add_parser(
        "send-event", parents=[common], help="deliver an event to a saga's waiting step"
    )
    send.add_argument("id")
    send.add_argument("event", help="the event type, e.g. order.approved")
    send.add_argument("--body", default="{}", help="the event's body, a JSON object")
    send.add_argument("--message-id", help="the event's message id (deduplication)")


def run_sagas(args: argparse.Namespace) -> int:
    """Run one ``sagas`` subcommand; print its result or its error."""
    handler = _HANDLERS[args.action]
    try:
        with ApiClient(args.url, args.token) as client:
            result = handler(client, args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2, ensure_ascii=False) if args.json else None
    try:
        print(text if text is not None else "\n".join(_render(args.action, result)))
        sys.stdout.flush()
    except BrokenPipeError:  # `… | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _path(saga_id: str, tail: str = "") -> str:
    return f"/sagas/{quote(saga_id, safe='')}{tail}"


def _list(client: ApiClient, args: argparse.Namespace) -> Any:
    params = {
        "definition": args.definition,
        "status": args.status,
        "key": args.key,
        "limit": args.limit,
        "cursor": args.cursor,
    }
    return client.get("/sagas", params)


def _show(client: ApiClient, args: argparse.Namespace) -> Any:
    saga = client.get(_path(args.id))
    history = client.get(_path(args.id, "/history"))
    return {"saga": saga, "history": history["items"]}


def _history(client: ApiClient, args: argparse.Namespace) -> Any:
    return {"saga": client.get(_path(args.id)), **client.get(_path(args.id, "/history"))}


def _cancel(client: ApiClient, args: argparse.Namespace) -> Any:
    return client.post(_path(args.id, "/cancel"), {"reason": args.reason})


def _retry(client: ApiClient, args: argparse.Namespace) -> Any:
    return client.post(_path(args.id, "/retry"))


def _send_event(client: ApiClient, args: argparse.Namespace) -> Any:
    try:
        body = json.loads(args.body)
    except ValueError as exc:
        raise ApiError(f"--body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(f"--body must be a JSON object, not {type(body).__name__}")
    request: dict[str, Any] = {"event": args.event, "body": body}
    if args.message_id:
        request["message_id"] = args.message_id
    return client.post(_path(args.id, "/events"), request)


_HANDLERS: dict[str, Callable[[ApiClient, argparse.Namespace], Any]] = {
    "list": _list,
    "show": _show,
    "history": _history,
    "cancel": _cancel,
    "retry": _retry,
    "send-event": _send_event,
}


# -- for people ------------------------------------------------------------------------
def _render(action: str, result: Any) -> list[str]:
    if action == "list":
        return _render_list(result)
    if action == "show":
        return _render_saga(result["saga"], result["history"])
    if action == "history":
        return timeline(result["saga"], result["items"])
    saga = result if isinstance(result, Mapping) and "status" in result else None
    if saga is None:
        return [f"{action}: accepted"]
    return [f"{action}: accepted; saga {saga['id']} is {saga['status']}"]


def _render_list(page: Mapping[str, Any]) -> list[str]:
    rows = [
        (
            item["id"],
            item["definition"],
            item["version"],
            item.get("key"),
            item["status"],
            when(item["created_at"]),
            (item.get("reason") or {}).get("code"),
        )
        for item in page["items"]
    ]
    if not rows:
        return ["no sagas"]
    lines = table(("ID", "DEFINITION", "V", "KEY", "STATUS", "CREATED (UTC)", "REASON"), rows)
    if page.get("next_cursor"):
        lines.append(f"more: --cursor {page['next_cursor']}")
    return lines


def _render_saga(saga: Mapping[str, Any], history: list[Mapping[str, Any]]) -> list[str]:
    rows = [
        (
            step["name"],
            step["status"],
            step.get("attempts"),
            (step.get("compensation") or {}).get("attempts"),
            when(step.get("started_at")),
            when(step.get("finished_at")),
            (step.get("error") or {}).get("code"),
        )
        for step in saga.get("steps", [])
    ]
    return [
        f"saga {saga['id']}",
        *header_lines(saga),
        "",
        *table(
            ("STEP", "STATUS", "ATTEMPTS", "COMP.", "STARTED (UTC)", "FINISHED (UTC)", "ERROR"),
            rows,
        ),
        "",
        "timeline:",
        *entry_lines(saga, history),
    ]
