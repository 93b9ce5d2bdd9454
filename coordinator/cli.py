"""The ``saga-coordinator`` command line (also ``python -m coordinator``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saga-coordinator",
        description="Saga coordinator: run the service, or check, store and draw definitions.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the service: consumers, timers and the REST API")
    validate = sub.add_parser("validate", help="check saga definition files")
    validate.add_argument("files", nargs="+", metavar="FILE")
    register = sub.add_parser("register", help="validate and store definitions in MongoDB")
    register.add_argument("files", nargs="+", metavar="FILE")
    graph = sub.add_parser("graph", help="print a definition as a Mermaid flowchart")
    graph.add_argument("file", metavar="FILE")
    sub.add_parser("demo", help="run sample sagas on embedded defaults and print their timelines")
    return parser


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

        return register_files(args.files)
    if args.command == "run":
        from coordinator.app import run

        return run()
    if args.command == "demo":
        from coordinator.demo import main as demo

        return demo()
    raise AssertionError(args.command)  # argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
