"""Property-based fuzzing of the published OpenAPI schema with schemathesis: whatever a client
sends, valid or not, no endpoint answers 5xx and every answer matches the schema (status
codes, content types, bodies, headers), and nothing is served without a key.

``negative_data_rejection`` is left out: it counts ``?kpi=true`` as a non-string KPI name, and
a request with a valid ``X-API-Key`` beside a malformed ``Authorization`` header as invalid,
both of which the API rightly serves. (It found that numeric times were read as Unix times;
test_validation.py now covers that.)"""

from __future__ import annotations

import dataclasses

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from kpi_pipeline.api.app import create_app
from kpi_pipeline.config import Settings
from kpi_pipeline_tests.api.conftest import API_KEY, OTHER_KEY

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    ignored_auth,
]

# schemathesis.pytest.from_fixture would build the schema per test, but does not run on pytest 9.
# So the app is built once, here, and pointed at a seeded Postgres database while the tests run;
# every request, the checks' own included, reaches that database. The fuzzed writes only add
# rows, so one database serves every operation.
APP = create_app(Settings(database_url="sqlite://", api_keys=f"{API_KEY},{OTHER_KEY}"))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture
def seeded_app(module_seeded):
    idle = APP.state.api
    APP.state.api = dataclasses.replace(idle, engine=module_seeded.engine)
    yield APP
    APP.state.api = idle


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
def test_no_5xx_and_every_response_matches_the_schema(case, seeded_app):
    case.call_and_validate(headers={"X-API-Key": API_KEY}, checks=CHECKS)
