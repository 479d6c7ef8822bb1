"""Schemathesis against the bundle service's own OpenAPI schema: no 5xx, no off-schema answer."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from avatar_bundles.app import create_app
from avatar_bundles.config import BundlesSettings
from avatar_shared.web.auth import AuthSettings
from avatar_shared.web.policy import Policy

SAMPLES = Path(__file__).parents[3] / "services" / "bundles" / "samples"

app = create_app(
    BundlesSettings(
        directory=str(SAMPLES), rate_per_ip="100000/second", rate_per_principal="100000/second"
    ),
    AuthSettings(policy_file="unused", anonymous=True),
    Policy.model_validate(
        {"rules": [{"principals": ["anonymous"], "avatars": ["demo-avatar", "other"]}]}
    ),
    None,
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_bundle_api_honours_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            negative_data_rejection,
        ]
    )
