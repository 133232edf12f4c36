"""schemathesis against a live `zuulpush serve`, from the document it serves at `/openapi.json`:
for every operation, valid (positive) and invalid (negative) requests with the right credentials,
checking that nothing answers 5xx and that every answer's status, content type, headers and
body are the documented ones (and that invalid input is refused).

Examples are bounded (`EXAMPLES`, `NEGATIVE_EXAMPLES` per operation; more with
`ZUULPUSH_SCHEMATHESIS_EXAMPLES=N`) and derandomized, so that a run is repeatable and short. Not
fuzzed: `GET /dashboard/events` (a stream that does not end) and the edge's `POST /admin/drain`
(it would drain the node under test; `tests/integration/test_admin.py` covers it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from router.api.openapi import EDGE_TAG, build

from .servers import ServerProcess, start_server, stop_all

pytestmark = pytest.mark.timeout(120)

EXAMPLES = int(os.environ.get("ZUULPUSH_SCHEMATHESIS_EXAMPLES", "25"))
NEGATIVE_EXAMPLES = max(1, EXAMPLES // 2)
SKIPPED = {("GET", "/dashboard/events"), ("POST", "/admin/drain")}
POSITIVE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
                   response_headers_conformance, response_schema_conformance]
NEGATIVE_CHECKS = [*POSITIVE_CHECKS, negative_data_rejection]
REJECTIONS = [400, 401, 403, 404, 405, 413, 429]
"""What refusing invalid input may answer: schemathesis's list, with 413 for a body over its
limit (an invalid body may well be a large one)."""
SPEC = build()


def has_input(operation: dict[str, Any]) -> bool:
    return bool(operation.get("parameters") or operation.get("requestBody"))


OPERATIONS = sorted((method.upper(), path) for path, item in SPEC["paths"].items()
                    for method in item if method in {"get", "post"}
                    and (method.upper(), path) not in SKIPPED)
CASES = [(mode, method, path) for mode in GenerationMode for method, path in OPERATIONS
         if mode is GenerationMode.POSITIVE or has_input(SPEC["paths"][path][method.lower()])]
"""Negative cases only for operations with an input to spoil."""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A `zuulpush serve` of its own: broadcasts pushed here must reach no other test."""
    process = start_server(tmp_path_factory.mktemp("schemathesis"), {})
    yield process
    stop_all([process])


@pytest.fixture(scope="module")
def schema(live: ServerProcess) -> Any:
    """The document as the live server serves it."""
    config = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {
        "expected-statuses": REJECTIONS}}})
    return schemathesis.openapi.from_url(f"{live.api}/openapi.json", config=config)


@pytest.fixture(scope="module")
def demo_token(live: ServerProcess) -> str:
    response = requests.post(f"{live.api}/demo/token", timeout=5)
    response.raise_for_status()
    return str(response.json()["token"])


def credentials(live: ServerProcess, demo_token: str, method: str, path: str) -> dict[str, str]:
    """The Authorization header the operation wants."""
    tags = SPEC["paths"][path][method.lower()]["tags"]
    if path == "/demo/push":
        key = demo_token
    elif "push" in tags:
        key = live.api_key
    elif "inbox" in tags:
        key = live.token("schemathesis-device", "schemathesis-user")
    elif "dashboard" in tags or EDGE_TAG in tags:
        key = live.admin_key
    else:
        return {}
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("mode", "method", "path"), CASES,
                         ids=[f"{mode.value}-{m} {p}" for mode, m, p in CASES])
def test_operation_keeps_to_the_document(schema: Any, live: ServerProcess, demo_token: str,
                                         method: str, path: str, mode: GenerationMode) -> None:
    operation = schema[path][method]
    headers = credentials(live, demo_token, method, path)
    edge = EDGE_TAG in SPEC["paths"][path][method.lower()]["tags"]
    base_url = live.edge if edge else live.api
    positive = mode is GenerationMode.POSITIVE
    checks = POSITIVE_CHECKS if positive else NEGATIVE_CHECKS

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES if positive else NEGATIVE_EXAMPLES, deadline=None,
              derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        case.call_and_validate(base_url=base_url, headers=headers, checks=checks, timeout=10)

    run()
