"""The models a session uses, chosen by configuration (see :mod:`avatar_agent.config`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from livekit.agents import llm, stt, tokenize, tts

from avatar_agent.avatars import Avatar
from avatar_agent.config import AgentSettings, LLMProvider, TTSProvider
from avatar_agent.demo import DemoLLM, DemoTTS

#: Local servers need no key, but the OpenAI client insists on one.
_NO_KEY = "unused"


@dataclass
class Models:
    llm: llm.LLM[Any] | llm.RealtimeModel
    tts: tts.TTS[Any]
    stt: stt.STT[Any] | None = None

    @property
    def tts_keeps_emotions(self) -> bool:
        """Only Cartesia reads ``<emotion/>`` tags; any other TTS would say them."""
        return self.tts.provider.lower() == "cartesia"


def build_models(settings: AgentSettings, avatar: Avatar) -> Models:
    return Models(llm=_llm(settings), tts=_tts(settings, avatar), stt=_stt(settings))


def _key(secret: object) -> str:
    value = getattr(secret, "get_secret_value", lambda: "")()
    return str(value) or _NO_KEY


def _llm(settings: AgentSettings) -> llm.LLM[Any] | llm.RealtimeModel:
    from livekit.plugins import openai

    if settings.llm is LLMProvider.DEMO:
        return DemoLLM()
    if settings.llm is LLMProvider.REALTIME:
        return openai.realtime.RealtimeModel(
            model=settings.realtime_model,
            modalities=["text"],
            api_key=_key(settings.openai_api_key),
        )
    if settings.llm_base_url:
        return openai.LLM(
            model=settings.llm_model,
            base_url=settings.llm_base_url,
            api_key=_key(settings.openai_api_key),
        )
    return openai.LLM(model=settings.llm_model, api_key=_key(settings.openai_api_key))


def _stt(settings: AgentSettings) -> stt.STT[Any] | None:
    """Only a chat LLM needs speech-to-text; a realtime model hears the user itself."""
    if settings.llm is not LLMProvider.OPENAI_COMPATIBLE:
        return None
    from livekit.plugins import openai

    if settings.stt_base_url:
        return openai.STT(
            model=settings.stt_model,
            base_url=settings.stt_base_url,
            api_key=_key(settings.openai_api_key),
            use_realtime=True,
        )
    return openai.STT(
        model=settings.stt_model, api_key=_key(settings.openai_api_key), use_realtime=True
    )


def _tts(settings: AgentSettings, avatar: Avatar) -> tts.TTS[Any]:
    if settings.tts is TTSProvider.DEMO:
        return DemoTTS()
    from livekit.plugins import cartesia

    return cartesia.TTS(
        model=settings.tts_model,
        voice=avatar.voice,
        api_key=_key(settings.cartesia_api_key),
        # Keep a whole <emotion/> tag in one request to Cartesia: split, it is read aloud.
        tokenizer=tokenize.blingfire.SentenceTokenizer(retain_format=True, xml_aware=True),
    )
