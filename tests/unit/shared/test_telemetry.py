import pytest
from opentelemetry.sdk.resources import SERVICE_NAME

from avatar_shared.config import ConfigError
from avatar_shared.telemetry import build_resource, setup_telemetry


def test_sdk_disabled_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    telemetry = setup_telemetry("svc")
    assert telemetry.tracer_provider is None
    assert telemetry.meter_provider is None


def test_unsupported_otlp_protocol_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        setup_telemetry("svc")


def test_otel_service_name_wins_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "token-eu-1")
    assert build_resource("token", "1.0").attributes[SERVICE_NAME] == "token-eu-1"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    assert build_resource("token", "1.0").attributes[SERVICE_NAME] == "token"
