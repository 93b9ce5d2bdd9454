"""Generate ``schemas/saga-definition.schema.json`` from the definition models.

Run ``python -m coordinator.definitions.jsonschema`` after changing ``schemas/definition.py``
to rewrite the file, or with ``--check`` (as CI and the tests do) to exit 1 when the
checked-in file is stale.

The schema covers the per-field rules only; the cross-step rules (unique step names,
references, conditions, the pivot) are checked by ``coordinator.definitions.load_definition``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

import schemas
from schemas.definition import SagaDefinition, format_duration

__all__ = ["SCHEMA_FILE", "json_schema", "main", "render"]

SCHEMA_FILE = Path(schemas.__file__).resolve().parent / "saga-definition.schema.json"
SCHEMA_ID = "urn:saga-coordinator:schema:saga-definition"


class _Generator(GenerateJsonSchema):
    """Writes duration defaults as the format spells them (``30s``), not ISO 8601."""

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):
            return format_duration(dft)
        return super().encode_default(dft)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a saga definition document."""
    generated = SagaDefinition.model_json_schema(mode="validation", schema_generator=_Generator)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **generated,
        "title": "Saga definition",
        "description": (
            "One saga definition (YAML or JSON). Generated from schemas/definition.py by "
            "`python -m coordinator.definitions.jsonschema`: do not edit by hand. Cross-step "
            "rules (unique step names, references to earlier steps only and never across "
            "branches, the names a condition or an await reads, no pivot in a group, no "
            "compensation after a pivot) and the compilation of conditions are checked by "
            "the coordinator, not by this schema."
        ),
    }


def render() -> str:
    """The schema file's exact text."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the schema file, or with ``--check`` report whether it is up to date.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 1 when ``--check`` finds the file stale or missing, else 0.
    """
    parser = argparse.ArgumentParser(prog="python -m coordinator.definitions.jsonschema")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", type=Path, default=SCHEMA_FILE, help="the file to write")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
        if current != text:
            print(
                f"{args.output} is stale: run `python -m coordinator.definitions.jsonschema`",
                file=sys.stderr,
            )
            return 1
        print(f"{args.output}: up to date")
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
