"""The ``validate`` and ``graph`` commands of the command line."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from coordinator.definitions.graph import mermaid
from coordinator.definitions.loader import load_file
from coordinator.errors import DefinitionError

__all__ = ["graph_file", "validate_files"]


def validate_files(files: Iterable[str]) -> int:
    """Check definition files: ``file: ok`` on stdout, ``file:line: field: message`` on stderr.

    Args:
        files: Paths of YAML or JSON definitions.

    Returns:
        The exit status: 0 when every file is valid, 1 otherwise (an unreadable file counts).
    """
    status = 0
    for file in files:
        try:
            load_file(file)
        except DefinitionError as exc:
            status = 1
            for error in exc.errors:
                print(error, file=sys.stderr)
        else:
            print(f"{file}: ok")
    return status


def graph_file(file: str) -> int:
    """Print a definition as a Mermaid flowchart.

    Args:
        file: Path of a YAML or JSON definition.

    Returns:
        The exit status: 0, or 1 (with the located errors on stderr) if the file is invalid.
    """
    try:
        definition = load_file(file)
    except DefinitionError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
    print(mermaid(definition))
    return 0
