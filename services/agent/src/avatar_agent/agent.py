"""The avatar agent: one tag parser on both text paths, tags reported once per speech.

The LLM's text reaches two nodes of the voice pipeline: ``tts_node`` (what is spoken) and
``transcription_node`` (what the user reads). Each runs its own :class:`TagParser` over
the same text, so both strip action tags identically; only text bound for Cartesia keeps
the allowed emotion tags. Both parsers find the same tags in the same order, and
:class:`SpeechTags` reports each (speech, tag index) once, whichever node sees it first:
tags reach the bus even when one of the two outputs is disabled.

``llm_node`` sends the LLM the newest part of the conversation
(:mod:`avatar_agent.history`). It and ``tts_node`` also record a provider failure of the
speech they serve (:class:`~avatar_agent.failures.ReplyFailures`) before the framework
sees it. ``llm_node`` also ends a reply that runs past ``max_reply_chars``: the LLM was
asked for at most ``AGENT_MAX_REPLY_TOKENS``, and a server that ignores the limit (a local
model repeating itself for ever) must not talk, and cost speech, without end.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from livekit import rtc
from livekit.agents import Agent, FlushSentinel, ModelSettings, llm
from livekit.agents.voice.agent_activity import _SpeechHandleContextVar
from opentelemetry import metrics

from avatar_agent.avatars import Avatar
from avatar_agent.config import DEFAULT_TEXT_LIMITS, TextLimits
from avatar_agent.failures import ReplyFailures
from avatar_agent.history import CHARS_PER_TOKEN, recent
from avatar_agent.prompt import build_instructions
from avatar_agent.provider_http import FinishReasons
from avatar_agent.tags import Tag, TagParser
from avatar_shared import semconv
from avatar_shared.telemetry import tally

log = logging.getLogger(__name__)

TagSink = Callable[[str, Tag], None]


def _says_something(chunk: llm.ChatChunk | str | FlushSentinel) -> bool:
    """Whether a chunk of the LLM's stream holds text or a tool call."""
    if isinstance(chunk, str):
        return bool(chunk)
    delta = getattr(chunk, "delta", None)
    return delta is not None and bool(delta.content or delta.tool_calls)


def _text_length(chunk: llm.ChatChunk | str | FlushSentinel) -> int:
    if isinstance(chunk, str):
        return len(chunk)
    delta = getattr(chunk, "delta", None)
    return len(delta.content or "") if delta is not None else 0


def current_speech_id() -> str | None:
    """The id of the speech whose pipeline is running in this task.

    livekit-agents runs each speech's nodes in tasks that carry its ``SpeechHandle`` in a
    context variable; it has no public accessor (``session.current_speech`` is the one
    *playing*, not the one being generated, which differs with preemptive generation).
    """
    handle = _SpeechHandleContextVar.get(None)
    return handle.id if handle is not None else None


async def strip_tags(
    text: AsyncIterable[str],
    parser: TagParser,
    on_tags: Callable[[list[Tag]], None],
    on_end: Callable[[TagParser], None] = lambda parser: None,
) -> AsyncIterator[str]:
    """The pure streaming transform: text in, text without tags out, tags reported.

    ``on_end`` sees the parser once the text has ended, for its counts of what it removed
    without a tag to report.
    """
    async for chunk in text:
        clean, tags = parser.feed(str(chunk))
        if tags:
            on_tags(tags)
        if clean:
            yield clean
    clean, tags = parser.close()
    if tags:
        on_tags(tags)
    if clean:
        yield clean
    on_end(parser)


class SpeechTags:
    """Reports each tag of a speech once, in order, although two nodes parse it."""

    def __init__(self, sink: TagSink) -> None:
        self._sink = sink
        self._reported: dict[str, int] = {}
        self._ended: set[str] = set()
        self._discarded = tally(
            metrics.get_meter(semconv.INSTRUMENTATION_NAME),
            semconv.METRIC_AGENT_TAGS_DISCARDED,
            "Tag-like text removed without a tag to report, by reason",
        )

    def report(self, speech_id: str, tags: list[Tag]) -> None:
        done = self._reported.get(speech_id, 0)
        for tag in tags:
            if tag.index >= done:
                self._sink(speech_id, tag)
                done = tag.index + 1
        self._reported[speech_id] = done

    def ended(self, speech_id: str, parser: TagParser) -> None:
        """Counts what the parser removed without a tag, once per speech."""
        if speech_id in self._ended:
            return
        self._ended.add(speech_id)
        for reason, count in (("unterminated", parser.unterminated), ("nameless", parser.nameless)):
            if count:
                self._discarded.add(count, {semconv.REASON: reason})
                log.info("tag-like text removed", extra={"reason": reason, "count": count})

    def forget(self, speech_id: str) -> None:
        self._reported.pop(speech_id, None)
        self._ended.discard(speech_id)


class AvatarAgent(Agent):
    def __init__(
        self,
        avatar: Avatar,
        *,
        on_tag: TagSink,
        tts_keeps_emotions: bool,
        text: TextLimits = DEFAULT_TEXT_LIMITS,
        on_speech_begins: Callable[[str], None] = lambda speech_id: None,
        finishes: FinishReasons | None = None,
        **kwargs: Any,
    ) -> None:
        """``on_speech_begins``: a speech's first node is running, inside its turn."""
        super().__init__(instructions=build_instructions(avatar), **kwargs)
        self.avatar = avatar
        self._on_speech_begins = on_speech_begins
        self.speech_tags = SpeechTags(self._count_and_forward(on_tag))
        self.failures = ReplyFailures()
        self._finishes = finishes
        self._tts_keeps_emotions = tts_keeps_emotions
        self._max_hold = text.max_tag_hold
        self._max_history = text.max_history_chars
        # Twice the characters a reply of that many tokens holds: only a server that
        # ignores the limit gets there.
        self._max_reply_chars = 2 * CHARS_PER_TOKEN * text.max_reply_tokens

    def _count_and_forward(self, sink: TagSink) -> TagSink:
        counter = tally(
            metrics.get_meter(semconv.INSTRUMENTATION_NAME),
            semconv.METRIC_AGENT_TAGS,
            "Inline tags parsed, by kind and validity",
        )

        def forward(speech_id: str, tag: Tag) -> None:
            counter.add(1, {"kind": tag.kind.value, "valid": tag.valid})
            if not tag.valid:
                log.info("tag not allowed for this avatar", extra={"tag": tag.name})
            sink(speech_id, tag)

        return forward

    def _parser(self, *, keep_emotions: bool) -> TagParser:
        return TagParser(
            actions=self.avatar.actions.keys(),
            emotions=self.avatar.emotions,
            keep_emotions=keep_emotions,
            max_hold=self._max_hold,
        )

    def _clean(self, text: AsyncIterable[str], *, keep_emotions: bool) -> AsyncIterator[str]:
        speech_id = current_speech_id()
        if speech_id is not None:
            self._on_speech_begins(speech_id)

        def on_tags(tags: list[Tag]) -> None:
            if speech_id is None:
                log.warning("tags outside any speech not reported", extra={"count": len(tags)})
                return
            self.speech_tags.report(speech_id, tags)

        def on_end(parser: TagParser) -> None:
            if speech_id is not None:
                self.speech_tags.ended(speech_id, parser)

        return strip_tags(text, self._parser(keep_emotions=keep_emotions), on_tags, on_end)

    async def llm_node(
        self,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> AsyncIterator[llm.ChatChunk | str | FlushSentinel]:
        speech_id = current_speech_id()
        if speech_id is not None:
            self._on_speech_begins(speech_id)
        said_something = False
        chars = 0
        try:
            sent = recent(chat_ctx, self._max_history)
            stream = Agent.default.llm_node(self, sent, tools, model_settings)
            async with aclosing(stream):  # ending early closes the provider's stream
                async for chunk in stream:
                    chars += _text_length(chunk)
                    if chars > self._max_reply_chars:
                        break
                    said_something = said_something or _says_something(chunk)
                    yield chunk
        except Exception as exc:
            self.failures.record(speech_id, "llm", provider_name(self.session.llm), exc)
            raise
        if chars > self._max_reply_chars:
            log.warning("the LLM ignored the reply's token limit; its reply was cut")
            self.failures.record_kind(speech_id, "llm", provider_name(self.session.llm), "length")
            return
        # The stream ended as if complete; the provider may still have cut it short.
        cut = self._finishes.pop(speech_id) if self._finishes and speech_id else None
        if cut is not None or not said_something:
            reason = cut or "empty"
            self.failures.record_kind(speech_id, "llm", provider_name(self.session.llm), reason)

    async def tts_node(
        self, text: AsyncIterable[str], model_settings: ModelSettings
    ) -> AsyncIterator[rtc.AudioFrame]:
        speech_id = current_speech_id()
        clean = self._clean(text, keep_emotions=self._tts_keeps_emotions)
        try:
            async for frame in Agent.default.tts_node(self, clean, model_settings):
                yield frame
        except Exception as exc:
            self.failures.record(speech_id, "tts", provider_name(self.session.tts), exc)
            raise

    async def transcription_node(
        self, text: AsyncIterable[Any], model_settings: ModelSettings
    ) -> AsyncIterator[str]:
        async for chunk in self._clean(text, keep_emotions=False):
            yield chunk


def provider_name(model: object) -> str:
    return str(getattr(model, "provider", None) or "unknown")
