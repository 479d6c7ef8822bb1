"""Settings of the agent (``AGENT_*``), and the providers' standard key variables.

Provider keys keep the names their SDKs and users know (``OPENAI_API_KEY``,
``CARTESIA_API_KEY``). What a run needs depends on its providers and on whether it hears
the user (a LiveKit job does; the local scripted run types the user's turns, so it needs
no speech-to-text): :meth:`AgentSettings.check` names every missing setting at once, each
with the way to fix it, and the process stops at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from avatar_agent.lifecycle import SessionLimits
from avatar_shared.config import ConfigError
from avatar_shared.ratelimit import Rate

#: OpenAI's models, used when the provider is OpenAI itself (no base URL).
OPENAI_CHAT_MODEL = "gpt-4.1-mini"
OPENAI_STT_MODEL = "gpt-4o-mini-transcribe"


class LLMProvider(StrEnum):
    REALTIME = "realtime"  # OpenAI realtime model, text out
    OPENAI_COMPATIBLE = "openai-compatible"  # any chat-completions endpoint (vLLM, Ollama)
    DEMO = "demo"  # scripted replies, no network


class TTSProvider(StrEnum):
    CARTESIA = "cartesia"
    DEMO = "demo"  # silence, no network


@dataclass(frozen=True)
class TextLimits:
    """What bounds the text of a session: the settings of the same names, whose
    defaults these are."""

    max_tag_hold: int = 64
    max_text_input_chars: int = 2000
    text_input_rate: str = "10/minute"
    max_history_chars: int = 16_000
    max_reply_tokens: int = 1000


DEFAULT_TEXT_LIMITS = TextLimits()


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
    realtime_base_url: str | None = Field(
        None,
        description="Realtime API base URL for realtime, e.g. an Azure or proxy endpoint "
        "(OpenAI if unset)",
    )
    llm_model: str | None = Field(
        None,
        description=f"Model name for openai-compatible ({OPENAI_CHAT_MODEL} on OpenAI; "
        "required with a base URL)",
    )
    llm_base_url: str | None = Field(
        None, description="Chat-completions base URL for openai-compatible (OpenAI if unset)"
    )
    stt_model: str | None = Field(
        None,
        description=f"Streaming STT model for openai-compatible ({OPENAI_STT_MODEL} on OpenAI; "
        "required with a base URL)",
    )
    stt_base_url: str | None = Field(
        None, description="OpenAI-compatible realtime transcription base URL (OpenAI if unset)"
    )
    tts_model: str = Field("sonic-3", description="Cartesia model")
    tts_base_url: str = Field("https://api.cartesia.ai", description="Cartesia API base URL")
    provider_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="Per LLM/TTS attempt, a stalled stream included"
    )
    provider_retries: int = Field(
        2, ge=0, le=10, description="Retries of a failed LLM/TTS request before any text came"
    )
    provider_max_retry_after_seconds: float = Field(
        10.0, ge=0, le=300, description="Longest Retry-After from a provider that is honoured"
    )
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
    max_jobs: int = Field(
        8,
        ge=1,
        le=1000,
        description="Calls one worker runs at once; LiveKit sends more to other workers "
        "(each call is a process, 160 MiB before it does anything: size it to the pod's "
        "memory limit)",
    )
    max_tag_hold: int = Field(
        DEFAULT_TEXT_LIMITS.max_tag_hold,
        ge=16,
        le=1024,
        description="Longest tag held back, in chars",
    )
    max_text_input_chars: int = Field(
        DEFAULT_TEXT_LIMITS.max_text_input_chars,
        ge=1,
        le=100_000,
        description="Longest typed message taken; the rest is cut",
    )
    max_reply_tokens: int = Field(
        DEFAULT_TEXT_LIMITS.max_reply_tokens,
        ge=16,
        le=32_768,
        description="Longest reply asked of the LLM, in tokens (max_completion_tokens, "
        "max_output_tokens); a reply cut there is reported as llm_length, and one the "
        "server lets run past 8 characters a token is cut by the agent",
    )
    text_input_rate: Rate = Field(
        DEFAULT_TEXT_LIMITS.text_input_rate,
        description="Typed messages taken per session: a burst of N, then N per period; "
        "more are dropped (e.g. 10/minute)",
    )
    max_history_chars: int = Field(
        DEFAULT_TEXT_LIMITS.max_history_chars,
        ge=100,
        le=1_000_000,
        description="Conversation the LLM is given each turn, newest first, in characters "
        "(its instructions aside; a realtime model's server keeps a quarter of it in tokens)",
    )
    events_queue: int = Field(1000, ge=1, description="Events a call may queue for NATS")
    events_max_wait_seconds: float = Field(
        30.0, gt=0, description="How long an event may wait for NATS before it is dropped"
    )
    max_session_seconds: float = Field(
        1800, ge=30, le=86_400, description="Session length when the dispatch sets none (local run)"
    )
    inactivity_timeout_seconds: float = Field(
        300,
        ge=5,
        le=86_400,
        description="User inactivity that ends a session when the dispatch sets none (local run)",
    )
    local_avatar: str | None = Field(
        None, description="Avatar of the local scripted run (default: the file's first)"
    )
    trace_content: bool = Field(
        False, description="Record conversation text in the framework's spans"
    )

    @property
    def session_limits(self) -> SessionLimits:
        return SessionLimits(self.max_session_seconds, self.inactivity_timeout_seconds)

    @property
    def text_limits(self) -> TextLimits:
        return TextLimits(
            max_tag_hold=self.max_tag_hold,
            max_text_input_chars=self.max_text_input_chars,
            text_input_rate=self.text_input_rate,
            max_history_chars=self.max_history_chars,
            max_reply_tokens=self.max_reply_tokens,
        )

    @property
    def chat_model(self) -> str:
        return self.llm_model or OPENAI_CHAT_MODEL

    @property
    def transcription_model(self) -> str:
        return self.stt_model or OPENAI_STT_MODEL

    def problems(self, *, hears_user: bool) -> list[str]:
        """What this run is missing, each with the way to fix it."""
        missing = []
        openai_key = _set(self.openai_api_key)
        if self.llm is LLMProvider.REALTIME and not openai_key:
            missing.append("OPENAI_API_KEY (AGENT_LLM=realtime runs on OpenAI)")
        if self.llm is LLMProvider.OPENAI_COMPATIBLE:
            if self.llm_base_url is None and not openai_key:
                missing.append(
                    "OPENAI_API_KEY (AGENT_LLM=openai-compatible calls OpenAI unless "
                    "AGENT_LLM_BASE_URL names your server)"
                )
            if self.llm_base_url is not None and not self.llm_model:
                missing.append(
                    "AGENT_LLM_MODEL (the model your server at AGENT_LLM_BASE_URL serves, "
                    "as its GET /models lists it)"
                )
            if hears_user and self.stt_base_url is None and not openai_key:
                missing.append(
                    "OPENAI_API_KEY (speech-to-text calls OpenAI unless AGENT_STT_BASE_URL "
                    "and AGENT_STT_MODEL name your own transcription server)"
                )
            if hears_user and self.stt_base_url is not None and not self.stt_model:
                missing.append(
                    "AGENT_STT_MODEL (the transcription model your server at "
                    "AGENT_STT_BASE_URL serves)"
                )
        if self.tts is TTSProvider.CARTESIA and not _set(self.cartesia_api_key):
            missing.append("CARTESIA_API_KEY (AGENT_TTS=cartesia)")
        return missing

    def check(self, *, hears_user: bool) -> None:
        """Raise ConfigError naming everything this run is missing."""
        if missing := self.problems(hears_user=hears_user):
            offline = "or run offline with AGENT_LLM=demo AGENT_TTS=demo"
            raise ConfigError("missing " + "; ".join(missing) + "; " + offline)


def _set(secret: SecretStr | None) -> bool:
    return secret is not None and bool(secret.get_secret_value().strip())
