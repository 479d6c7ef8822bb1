"""The offline ``demo`` providers: a scripted LLM and a silent TTS, for runs without keys.

They are real livekit-agents components, so everything downstream (``AgentSession``, our
tag parsing in ``tts_node``/``transcription_node``, the events on the bus, the actions
service) runs exactly as with real providers. Neither calls anything: the LLM streams
canned, tagged replies in small uneven chunks (tags end up split across chunks, as with
a real model), and the TTS turns text into silence of a plausible length. They are named
"demo" everywhere (labels, logs, metrics) so nobody mistakes them for a model.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

from livekit.agents import APIConnectOptions, llm, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

#: One reply per user turn, in order, then again from the start.
DEMO_REPLIES: tuple[str, ...] = (
    '<emotion value="happy"/> Hi there, I am the demo avatar. Nice to meet you! [action:wave_hand]',
    '<emotion value="content"/> I run without any API keys: my words are scripted, and my '
    "voice is silence of the right length. [action:nod]",
    "A tag like this one [action:wave_hand ] is removed even when split across chunks, and "
    'text such as a[0] or x < y stays. <emotion value="bored"/> Unknown emotions are dropped. '
    "[action:thumbs_up] [action:moonwalk]",
)
#: Chunk sizes cycled through when streaming a reply.
_CHUNK_SIZES = (3, 7, 2, 11, 5, 1, 8)
SAMPLE_RATE = 16_000
SECONDS_PER_CHAR = 0.05


def chunked(text: str, sizes: Sequence[int] = _CHUNK_SIZES) -> list[str]:
    chunks: list[str] = []
    start = 0
    for size in itertools.cycle(sizes):
        if start >= len(text):
            return chunks
        chunks.append(text[start : start + size])
        start += size
    raise AssertionError("unreachable")


class DemoLLM(llm.LLM[Any]):
    """Streams scripted tagged replies; the n-th user turn gets reply n (cycling)."""

    def __init__(self, replies: Sequence[str] = DEMO_REPLIES, *, chunk_delay: float = 0.02) -> None:
        super().__init__()
        if not replies:
            raise ValueError("the demo LLM needs at least one reply")
        self.replies = tuple(replies)
        self.chunk_delay = chunk_delay

    @property
    def model(self) -> str:
        return "demo-script"

    @property
    def provider(self) -> str:
        return "demo"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> DemoLLMStream:
        turns = sum(1 for item in chat_ctx.items if getattr(item, "role", None) == "assistant")
        reply = self.replies[turns % len(self.replies)]
        return DemoLLMStream(
            self, reply=reply, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options
        )


class DemoLLMStream(llm.LLMStream):
    def __init__(self, demo: DemoLLM, *, reply: str, **kwargs: Any) -> None:
        super().__init__(demo, **kwargs)
        self._demo = demo
        self._reply = reply

    async def _run(self) -> None:
        request_id = utils.shortuuid("demo_")
        for chunk in chunked(self._reply):
            await asyncio.sleep(self._demo.chunk_delay)
            self._event_ch.send_nowait(
                llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=chunk))
            )


class DemoTTS(tts.TTS[Any]):
    """Streaming TTS that 'speaks' silence: ``SECONDS_PER_CHAR`` seconds per character.

    ``heard`` keeps every text chunk it was given, so tests can check what a TTS receives.
    """

    def __init__(self, *, seconds_per_char: float = SECONDS_PER_CHAR) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
        )
        self.seconds_per_char = seconds_per_char
        self.heard: list[str] = []

    @property
    def model(self) -> str:
        return "demo-silence"

    @property
    def provider(self) -> str:
        return "demo"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return self._synthesize_with_stream(text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> DemoSynthesizeStream:
        return DemoSynthesizeStream(tts=self, conn_options=conn_options)


class DemoSynthesizeStream(tts.SynthesizeStream):
    def __init__(self, *, tts: DemoTTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._demo = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid("demo_"),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        output_emitter.start_segment(segment_id=utils.shortuuid("seg_"))
        async for data in self._input_ch:
            if isinstance(data, self._FlushSentinel) or not data:
                continue
            self._mark_started()
            self._demo.heard.append(data)
            samples = int(len(data) * self._demo.seconds_per_char * SAMPLE_RATE)
            output_emitter.push(bytes(2 * samples))  # 16-bit PCM silence
        output_emitter.end_segment()
