"""Schemathesis against the token service's own OpenAPI schema: no 5xx, no off-schema answer."""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from avatar_shared.config import LiveKitSettings
from avatar_shared.web.auth import AuthSettings
from avatar_shared.web.policy import Policy
from avatar_token.app import create_app
from avatar_token.config import TokenSettings
from tests.unit.token.conftest import LIVEKIT_KEY, LIVEKIT_SECRET, POLICY

app = create_app(
    TokenSettings(rate_per_ip="100000/second", rate_per_principal="100000/second"),
    LiveKitSettings(url="wss://lk.example.test", api_key=LIVEKIT_KEY, api_secret=LIVEKIT_SECRET),
    AuthSettings(policy_file="unused", anonymous=True),
    Policy.model_validate(POLICY),
    http=httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(404))),
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_token_api_honours_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            negative_data_rejection,
        ]
    )
