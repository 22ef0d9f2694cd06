"""The committed OpenAPI spec (docs/openapi.json) is the API the server serves: a change to routes or schemas shows up
in review. Regenerate with ``SOFTPROMPT_UPDATE_OPENAPI=1 python -m pytest tests/test_openapi_snapshot.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from softprompt.server import Engine, create_app
from tests.conftest import tiny_backbone

SNAPSHOT = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"


def test_openapi_matches_snapshot() -> None:
    spec = create_app(Engine(tiny_backbone("llama"))).openapi()
    text = json.dumps(spec, indent=2, sort_keys=True) + "\n"
    if os.environ.get("SOFTPROMPT_UPDATE_OPENAPI"):
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.is_file(), f"{SNAPSHOT} missing; regenerate it (see this module's docstring)"
    assert json.loads(SNAPSHOT.read_text()) == spec, ("the API changed: review and regenerate docs/openapi.json "
                                                     "(see this module's docstring)")
    # The spec documents the limits clients rely on.
    classify = spec["components"]["schemas"]["ClassifyRequest"]["properties"]["inputs"]
    assert classify["maxItems"] == 64 and classify["minItems"] == 1
    assert "/v1/prompts/{name}" in spec["paths"] and "/metrics" in spec["paths"]
    # OpenAI-compatible: invalid bodies are 400 in OpenAI's shape there, and the refused values are in the schema.
    completions = spec["paths"]["/v1/completions"]["post"]["responses"]
    assert "400" in completions and "422" not in completions
    fields = spec["components"]["schemas"]["CompletionRequest"]["properties"]
    assert fields["temperature"]["anyOf"][0]["maximum"] == 0 and fields["n"]["anyOf"][0]["maximum"] == 1
