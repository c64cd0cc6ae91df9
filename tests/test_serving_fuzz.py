"""The server's OpenAPI document, fuzzed (bounded): bodies drawn from each endpoint's request schema
and arbitrary JSON with the same field names, posted to a tiny causal LM's, encoder's and dual
encoder's server. No body gets a 5xx, every 4xx is one message in the {"error": {...}} shape, and a body the
schema accepts is never refused as invalid (422): the schema refuses what the server refuses."""

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnlab.models.base import FAMILIES, build_model, preset
from attnlab.serving.app import ENDPOINTS, ServeConfig, create_app

EXAMPLES = 40  # per endpoint and family: a few seconds each


def served(name):
    spec = FAMILIES[name]
    model = build_model(preset(spec.tiny_preset)).eval()
    app = create_app(model, spec.processor.example(model.config),
                     ServeConfig(max_batch=4, max_queue=16, timeout_s=10, max_inputs=8, max_request_tokens=64))
    return app, ENDPOINTS[spec.kind]


def inline(schema, components):
    """The schema with every '#/components/schemas/X' reference replaced by X itself."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return inline(components[schema["$ref"].rsplit("/", 1)[1]], components)
        return {key: inline(value, components) for key, value in schema.items()}
    if isinstance(schema, list):
        return [inline(value, components) for value in schema]
    return schema


def request_schema(app, path) -> dict:
    spec = app.openapi()
    body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return inline(body, spec["components"]["schemas"])


def from_schema(schema):
    """Values a JSON schema accepts, for the parts of JSON schema that pydantic writes for our bodies."""
    if "anyOf" in schema:
        return st.one_of([from_schema(option) for option in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        required = {name: from_schema(schema["properties"][name]) for name in schema.get("required", [])}
        optional = {name: from_schema(field) for name, field in schema["properties"].items() if name not in required}
        return st.fixed_dictionaries(required, optional=optional)
    if kind == "array":
        return st.lists(from_schema(schema["items"]), min_size=schema.get("minItems", 0),
                        max_size=schema.get("maxItems", 4))
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=12)
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum", schema.get("exclusiveMinimum")), schema.get("maximum"),
                         exclude_min="exclusiveMinimum" in schema, allow_nan=False, allow_infinity=False)
    return {"boolean": st.booleans(), "null": st.none()}[kind]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=6)


def bodies(schema):
    """(body, whether the schema accepts it): schema-valid bodies, and the schema's fields with any values."""
    valid = from_schema(schema).map(lambda body: (body, True))
    loose = st.dictionaries(st.sampled_from(sorted(schema["properties"])), JSON, max_size=4).map(lambda b: (b, False))
    return st.one_of(valid, loose)


def check(client, path, body, schema_valid):
    reply = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert reply.status_code < 500, (body, reply.text)
    if reply.status_code >= 400:
        error = reply.json()
        assert set(error) == {"error"} and set(error["error"]) == {"message", "type"}, reply.text
        assert isinstance(error["error"]["message"], str) and error["error"]["message"]
    if schema_valid:
        assert reply.status_code != 422, (body, reply.text)


@pytest.mark.parametrize("name", ["gpt", "bert", "clip"])
def test_fuzzed_bodies_never_get_a_5xx_and_every_error_has_the_error_shape(name):
    app, paths = served(name)
    with TestClient(app) as client:
        for path in paths:
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(bodies(request_schema(app, path)))
            def fuzz(case):
                check(client, path, *case)

            fuzz()
