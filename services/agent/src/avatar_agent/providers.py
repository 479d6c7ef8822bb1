"""The models a session uses, chosen by configuration (see :mod:`avatar_agent.config`).

Build them inside livekit-agents' HTTP context (a job has one; the local run opens one):
the Cartesia and OpenAI speech plugins take their HTTP session from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import openai as openai_sdk
from livekit.agents import NOT_GIVEN, APIConnectOptions, llm, stt, tokenize, tts
from livekit.agents.voice.agent_session import SessionConnectOptions

from avatar_agent.agent import current_speech_id
from avatar_agent.avatars import Avatar
from avatar_agent.config import AgentSettings, LLMProvider, TTSProvider
from avatar_agent.demo import DemoLLM, DemoTTS
from avatar_agent.history import realtime_truncation
from avatar_agent.provider_http import FinishReasons, RetryAfterGate, http_client

#: Local servers need no key, but the OpenAI client insists on one.
_NO_KEY = "unused"


@dataclass
class Models:
    llm: llm.LLM[Any] | llm.RealtimeModel
    tts: tts.TTS[Any]
    stt: stt.STT[Any] | None = None
    #: the OpenAI client we built for the LLM (the plugin closes only clients it built)
    client: openai_sdk.AsyncClient | None = None
    #: replies that client's provider cut short, by speech
    finishes: FinishReasons = field(default_factory=lambda: FinishReasons(current_speech_id))

    async def aclose(self) -> None:
        """Close the models' connections (a session does not)."""
        for model in (self.llm, self.tts, self.stt):
            if model is not None:
                await model.aclose()
        if self.client is not None:
            await self.client.close()

    @property
    def tts_keeps_emotions(self) -> bool:
        """Only Cartesia reads ``<emotion/>`` tags; any other TTS would say them."""
        return self.tts.provider.lower() == "cartesia"


def build_models(settings: AgentSettings, avatar: Avatar, *, hears_user: bool) -> Models:
    """``hears_user``: a LiveKit job transcribes the user (a chat LLM then needs STT); the
    local run types the user's turns and needs none."""
    finishes = FinishReasons(current_speech_id)
    chat, client = _llm(settings, finishes)
    return Models(
        llm=chat,
        tts=_tts(settings, avatar),
        stt=_stt(settings) if hears_user else None,
        client=client,
        finishes=finishes,
    )


def connect_options(settings: AgentSettings) -> SessionConnectOptions:
    """Per-attempt timeout and retries of every provider request in a session."""
    attempt = APIConnectOptions(
        max_retry=settings.provider_retries, timeout=settings.provider_timeout_seconds
    )
    return SessionConnectOptions(llm_conn_options=attempt, tts_conn_options=attempt)


def _key(secret: object) -> str:
    value = getattr(secret, "get_secret_value", lambda: "")()
    return str(value) or _NO_KEY


def _llm(
    settings: AgentSettings, finishes: FinishReasons
) -> tuple[llm.LLM[Any] | llm.RealtimeModel, openai_sdk.AsyncClient | None]:
    from livekit.plugins import openai

    if settings.llm is LLMProvider.DEMO:
        return DemoLLM(), None
    if settings.llm is LLMProvider.REALTIME:
        realtime = openai.realtime.RealtimeModel(
            model=settings.realtime_model,
            modalities=["text"],
            api_key=_key(settings.openai_api_key),
            base_url=settings.realtime_base_url or NOT_GIVEN,  # unset: OpenAI
            truncation=realtime_truncation(settings.max_history_chars),
        )
        realtime.update_options(max_response_output_tokens=settings.max_reply_tokens)
        return realtime, None
    client = openai_sdk.AsyncClient(
        api_key=_key(settings.openai_api_key),
        base_url=settings.llm_base_url,  # None: OpenAI
        max_retries=0,  # livekit-agents retries (provider_retries), waiting for the gate
        http_client=http_client(
            RetryAfterGate(settings.provider_max_retry_after_seconds), finishes
        ),
    )
    chat = openai.LLM(
        model=settings.chat_model, client=client, max_completion_tokens=settings.max_reply_tokens
    )
    return chat, client


def _stt(settings: AgentSettings) -> stt.STT[Any] | None:
    """Only a chat LLM needs speech-to-text; a realtime model hears the user itself."""
    if settings.llm is not LLMProvider.OPENAI_COMPATIBLE:
        return None
    from livekit.plugins import openai

    return openai.STT(
        model=settings.transcription_model,
        api_key=_key(settings.openai_api_key),
        use_realtime=True,
        base_url=settings.stt_base_url or NOT_GIVEN,  # unset: OpenAI
    )


def _tts(settings: AgentSettings, avatar: Avatar) -> tts.TTS[Any]:
    if settings.tts is TTSProvider.DEMO:
        return DemoTTS()
    from livekit.plugins import cartesia

    return cartesia.TTS(
        model=settings.tts_model,
        voice=avatar.voice,
        api_key=_key(settings.cartesia_api_key),
        base_url=settings.tts_base_url,
        # Keep a whole <emotion/> tag in one request to Cartesia: split, it is read aloud.
        tokenizer=tokenize.blingfire.SentenceTokenizer(retain_format=True, xml_aware=True),
    )
