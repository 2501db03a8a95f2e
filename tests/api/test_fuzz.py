"""Property-based fuzzing of the live API against its own /openapi.json."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(live_server: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_server}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
def test_api_conforms_to_its_openapi(case: schemathesis.Case[Any]) -> None:
    """Generated valid and invalid requests never get a 5xx, and every answer matches the
    documented status codes, content types, headers and schemas."""
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            response_headers_conformance,
        ],
        timeout=10,
    )
