"""schemathesis drives the running gateway from its own OpenAPI document (internal port).

Valid and schema-violating requests alike must never get a 5xx; every error must be in
OpenAI's shape (the documented Error schema); every answer's content type must be the
documented one (``text/event-stream`` for streams).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz.conftest import KEY
from tests.integration.conftest import MODEL, Stack

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, status_code_conformance]
OPERATIONS = [
    ("/v1/chat/completions", "POST"),
    ("/v1/completions", "POST"),
    ("/v1/embeddings", "POST"),
    ("/v1/models", "GET"),
]
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


@pytest.fixture(scope="session")
def api_schema(fuzz_stack: Stack) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_stack.gateway.internal_url}/openapi.json")


def test_the_document_covers_every_public_operation(api_schema: schemathesis.BaseSchema) -> None:
    for path, method in OPERATIONS:
        assert api_schema[path][method] is not None


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
@given(data=st.data())
def test_the_gateway_answers_any_request_in_openai_shape(
    fuzz_stack: Stack,
    api_schema: schemathesis.BaseSchema,
    path: str,
    method: str,
    mode: schemathesis.GenerationMode,
    data: st.DataObject,
) -> None:
    case = data.draw(api_schema[path][method].as_strategy(generation_mode=mode))
    # Most cases name the served model, so they reach the worker and come back through the gateway.
    if isinstance(case.body, dict) and "model" in case.body and data.draw(st.booleans()):
        case.body["model"] = MODEL
    key = data.draw(st.sampled_from([KEY, KEY, KEY, "sk-wrong"]))
    case.call_and_validate(base_url=fuzz_stack.url, headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)
