"""The shipped OpenAPI description (``reconciler/http/openapi.yaml``, served at ``/api/v1/openapi.json``) checked
against the real server by schemathesis: generated requests, valid and malformed (negative mode), to every
operation; every answer must be one the description declares, with its content type and body schema, and never
a server error. Operator requests go through with an operator token (a real token from the config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from reconciler.http.handler import openapi
from tests.engine import Fleet
from tests.http import loop, poll, served
from tests.http.test_operations_api import OPS_TOKEN, with_tokens

SCHEMA = schemathesis.openapi.from_dict(openapi())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


def test_the_server_serves_its_description(fleet: Fleet, tmp_path: Path) -> None:
    with_tokens(fleet, tmp_path)
    with served(fleet) as s:
        assert json.loads(s.get("/api/v1/openapi.json").body) == openapi()
    assert {(op.method.upper(), op.path) for op in OPERATIONS} >= {
        ("GET", "/api/v1/environments"), ("GET", "/api/v1/environments/{name}"),
        ("POST", "/api/v1/environments/{name}/{action}"), ("POST", "/webhook"), ("GET", "/readyz"),
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_conforms_to_the_description(fleet: Fleet, tmp_path: Path, mode: GenerationMode) -> None:
    with_tokens(fleet, tmp_path)
    with served(fleet) as s, loop(s.controller):
        assert poll(lambda: s.get("/readyz").status == 200, "readiness")  # (a 503 is a server error to schemathesis)
        strategies = [op.as_strategy(generation_mode=mode) for op in OPERATIONS]
        seen: set[tuple[str, int]] = set()

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=st.one_of(strategies))
        def check(case: schemathesis.Case) -> None:
            response = case.call_and_validate(base_url=s.url, headers={"Authorization": f"Bearer {OPS_TOKEN}"})
            seen.add((case.path, response.status_code))
            assert response.status_code < 500

        check()
    # (negative cases exist only for operations with parameters or a body: the four API ones)
    assert len({path for path, _ in seen}) >= (6 if mode is GenerationMode.POSITIVE else 4), seen
