import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from avatar_shared.config import ConfigError, NatsSettings, Secret, load, settings_table


class DemoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_")

    api_secret: Secret = Field(description="A secret")
    port: int = Field(8000, gt=0, lt=65536, description="Port")


def test_missing_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEMO_API_SECRET", raising=False)
    with pytest.raises(ConfigError, match="DEMO_API_SECRET: Field required"):
        load(DemoSettings)


@pytest.mark.parametrize("value", ["", "changeme", "  SECRET ", "your-api-secret", "<secret>"])
def test_placeholder_secrets_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DEMO_API_SECRET", value)
    with pytest.raises(ConfigError, match=r"DEMO_API_SECRET: .*placeholder"):
        load(DemoSettings)


def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_API_SECRET", "s3cr3t-value-from-vault")
    monkeypatch.setenv("DEMO_PORT", "99999")
    with pytest.raises(ConfigError, match="DEMO_PORT: Input should be less than 65536"):
        load(DemoSettings)


def test_secrets_do_not_leak_into_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_API_SECRET", "s3cr3t-value-from-vault")
    settings = load(DemoSettings)
    assert "s3cr3t" not in repr(settings)
    assert settings.api_secret.get_secret_value() == "s3cr3t-value-from-vault"


def test_nats_servers_are_split_from_one_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://a:4222, nats://b:4222,")
    assert load(NatsSettings).servers == ["nats://a:4222", "nats://b:4222"]


def test_settings_table_lists_every_variable() -> None:
    table = settings_table([DemoSettings])
    assert "| `DEMO_API_SECRET` | *required* | A secret |" in table
    assert "| `DEMO_PORT` | `8000` | Port |" in table
