"""The checked-in JSON Schema matches the models."""

from __future__ import annotations

import json
from pathlib import Path

from coordinator.definitions import jsonschema


def test_checked_in_schema_is_up_to_date() -> None:
    assert jsonschema.SCHEMA_FILE.read_text(encoding="utf-8") == jsonschema.render(), (
        "schemas/saga-definition.schema.json is stale: run "
        "`python -m coordinator.definitions.jsonschema`"
    )


def test_check_flag_detects_a_stale_file(tmp_path: Path) -> None:
    output = tmp_path / "schema.json"
    assert jsonschema.main(["--check", "--output", str(output)]) == 1
    assert jsonschema.main(["--output", str(output)]) == 0
    assert jsonschema.main(["--check", "--output", str(output)]) == 0
    output.write_text("{}\n")
    assert jsonschema.main(["--check", "--output", str(output)]) == 1


def test_schema_shape() -> None:
    schema = json.loads(jsonschema.render())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == jsonschema.SCHEMA_ID
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "version", "steps"}
    assert schema["$defs"]["RetryPolicy"]["properties"]["backoff"]["default"] == "1s"
