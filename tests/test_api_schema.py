"""Schema-driven tests: schemathesis generates requests from the OpenAPI schema of the real server (conftest
``server``: real models, both real data sets) for every operation, a bounded number of examples each; no answer
may be a 5xx, and every answer must be declared in the schema (status, content type, body)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from genrec.server import ServerSettings, create_app

pytestmark = pytest.mark.integration

EXAMPLES = 8  # per operation: bounded, since a valid request may reach the model
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATIONS = [(method.upper(), path) for path, methods in
              create_app(ServerSettings(warm_up=False)).openapi()["paths"].items() for method in methods]


@pytest.fixture(scope="session")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_answer_is_declared_and_none_is_a_5xx(api_schema, server, method, path):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate], database=None,
              suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        case.call_and_validate(headers=server.read_headers, timeout=240, checks=CHECKS)

    check()
