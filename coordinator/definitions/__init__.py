"""Saga definitions: safe loading with located errors, cross-step checks, and drawing.

``load_definition`` / ``load_file`` are the validating entry points: they return a
``schemas.definition.SagaDefinition`` or raise ``coordinator.errors.DefinitionError`` whose
``errors`` are ``LocatedError`` objects (``file:line: field: message``), all of them at once.
"""

from __future__ import annotations

from coordinator.definitions.checks import check_definition
from coordinator.definitions.graph import mermaid
from coordinator.definitions.loader import (
    DEFAULT_MAX_BYTES,
    MAX_NODES,
    LocatedError,
    load_definition,
    load_file,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_NODES",
    "LocatedError",
    "check_definition",
    "load_definition",
    "load_file",
    "mermaid",
]
