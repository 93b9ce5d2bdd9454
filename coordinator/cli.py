"""The ``saga-coordinator`` command line (also ``python -m coordinator``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

#: ``dev``'s defaults: the embedded database's data folder and port.
_DEV_DATA_DIR = Path(".saga-dev")
_DEV_DB_PORT = 27018


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saga-coordinator",
        description="Saga coordinator: run the service, check, store and draw definitions, "
        "and read and steer sagas over the REST API.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the service: consumers, timers and the REST API")
    validate = sub.add_parser("validate", help="check saga definition files")
    validate.add_argument("files", nargs="+", metavar="FILE")
    register = sub.add_parser("register", help="validate and store definitions in MongoDB")
    register.add_argument("files", nargs="+", metavar="FILE")
    graph = sub.add_parser("graph", help="print a definition as a Mermaid flowchart")
    graph.add_argument("file", metavar="FILE")
    from coordinator.client import add_sagas_parser

    _add_dev_parser(sub)
    add_sagas_parser(sub)
    demo = sub.add_parser(
        "demo", help="run sample sagas on embedded defaults and print their timelines"
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="afterwards, leave the service, console and participants running until Ctrl-C",
    )
    return parser


def _add_dev_parser(sub: Any) -> None:
    """``dev``'s options (``coordinator.dev`` imports the whole service: only when run)."""
    dev = sub.add_parser(
        "dev",
        help="the service on embedded defaults (no Docker, no MongoDB install) until Ctrl-C",
        description="Run the coordinator, its REST API and console on a local "
        "MongoDB-compatible server whose data persists in --data-dir (unless "
        "SAGA_MONGODB_URL is set), until Ctrl-C. Other settings: SAGA_* variables.",
    )
    dev.add_argument(
        "--examples",
        action="store_true",
        help="also run the example participants and register the definitions in schemas/",
    )
    dev.add_argument(
        "--data-dir",
        type=Path,
        default=_DEV_DATA_DIR,
        help=f"where the embedded database keeps its data (default: {_DEV_DATA_DIR}/)",
    )
    dev.add_argument(
        "--db-port",
        type=int,
        default=_DEV_DB_PORT,
        help=f"the embedded database's port (default: {_DEV_DB_PORT})",
    )
    dev.add_argument("--port", type=int, help="the HTTP port (default: $SAGA_HTTP_PORT or 8080)")


def _mongodb_answers() -> bool:
    """Fail fast, with a hint, when nothing answers at ``SAGA_MONGODB_URL``."""
    from coordinator.local import mongodb_problem
    from coordinator.settings import CoordinatorSettings

    problem = mongodb_problem(CoordinatorSettings().mongodb_url)
    if problem is not None:
        print(problem, file=sys.stderr)
    return problem is None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "validate":
        from coordinator.definitions.commands import validate_files

        return validate_files(args.files)
    if args.command == "graph":
        from coordinator.definitions.commands import graph_file

        return graph_file(args.file)
    if args.command == "register":
        from coordinator.app import register_files

        return register_files(args.files) if _mongodb_answers() else 1
    if args.command == "run":
        from coordinator.app import run

        return run() if _mongodb_answers() else 1
    if args.command == "dev":
        from coordinator.dev import main as dev

        return dev(args)
    if args.command == "sagas":
        from coordinator.client import run_sagas

        return run_sagas(args)
    if args.command == "demo":
        from coordinator.demo import main as demo

        return demo(keep=args.keep)
    raise AssertionError(args.command)  # argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
