"""Settings of the agent (``AGENT_*``), and the providers' standard key variables.

Provider keys keep the names their SDKs and users know (``OPENAI_API_KEY``,
``CARTESIA_API_KEY``). A key is required only by the provider that uses it, and a missing
one stops the process at start with the variable's name.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class LLMProvider(StrEnum):
    REALTIME = "realtime"  # OpenAI realtime model, text out
    OPENAI_COMPATIBLE = "openai-compatible"  # any chat-completions endpoint (vLLM, Ollama)
    DEMO = "demo"  # scripted replies, no network


class TTSProvider(StrEnum):
    CARTESIA = "cartesia"
    DEMO = "demo"  # silence, no network


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENT_", extra="ignore")

    name: str = Field(
        "avatar-agent",
        min_length=1,
        max_length=128,
        description="Agent name for explicit dispatch; the token policy's agent_name",
    )
    avatars_file: Path = Field(description="TOML file describing every avatar (docs/agent.md)")
    llm: LLMProvider = Field(
        LLMProvider.REALTIME, description="realtime, openai-compatible or demo"
    )
    tts: TTSProvider = Field(TTSProvider.CARTESIA, description="cartesia or demo")
    realtime_model: str = Field("gpt-realtime-mini", description="OpenAI realtime model")
    llm_model: str = Field("gpt-4.1-mini", description="Model name for openai-compatible")
    llm_base_url: str | None = Field(
        None, description="Chat-completions base URL for openai-compatible (OpenAI if unset)"
    )
    stt_model: str = Field(
        "gpt-4o-mini-transcribe", description="Streaming STT model for openai-compatible"
    )
    stt_base_url: str | None = Field(
        None, description="OpenAI-compatible realtime transcription base URL (OpenAI if unset)"
    )
    tts_model: str = Field("sonic-3", description="Cartesia model")
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias="OPENAI_API_KEY",
        description="OpenAI key (realtime; openai-compatible without a base URL)",
    )
    cartesia_api_key: SecretStr | None = Field(
        None, validation_alias="CARTESIA_API_KEY", description="Cartesia key"
    )
    host: str = Field("0.0.0.0", description="Address of the health server")  # noqa: S104
    port: int = Field(
        8400, gt=0, lt=65536, description="Port of livekit-agents' worker health (GET /)"
    )
    probe_port: int = Field(
        8401, gt=0, lt=65536, description="Port of GET /healthz and GET /readyz (NATS, LiveKit)"
    )
    drain_timeout_seconds: int = Field(
        1800, gt=0, description="On SIGTERM, how long running calls may go on"
    )
    max_tag_hold: int = Field(64, ge=16, le=1024, description="Longest tag held back, in chars")
    events_queue: int = Field(1000, ge=1, description="Events a call may queue for NATS")
    events_max_wait_seconds: float = Field(
        30.0, gt=0, description="How long an event may wait for NATS before it is dropped"
    )
    local_avatar: str | None = Field(
        None, description="Avatar of the local scripted run (default: the file's first)"
    )
    trace_content: bool = Field(
        False, description="Record conversation text in the framework's spans"
    )

    @model_validator(mode="after")
    def _keys_for_providers(self) -> AgentSettings:
        missing = []
        needs_openai = self.llm is LLMProvider.REALTIME or (
            self.llm is LLMProvider.OPENAI_COMPATIBLE
            and not (self.llm_base_url and self.stt_base_url)
        )
        if needs_openai and not _set(self.openai_api_key):
            missing.append(f"OPENAI_API_KEY (needed by AGENT_LLM={self.llm.value})")
        if self.tts is TTSProvider.CARTESIA and not _set(self.cartesia_api_key):
            missing.append("CARTESIA_API_KEY (needed by AGENT_TTS=cartesia)")
        if missing:
            raise ValueError(
                "missing "
                + ", ".join(missing)
                + "; or run offline with AGENT_LLM=demo AGENT_TTS=demo"
            )
        return self


def _set(secret: SecretStr | None) -> bool:
    return secret is not None and bool(secret.get_secret_value().strip())
