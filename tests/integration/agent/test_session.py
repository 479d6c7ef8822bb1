"""A real ``AgentSession`` with the demo LLM and a recording TTS, reporting to real NATS.

What is checked is what users see and hear: no action tag reaches the TTS or the
transcript, emotion tags reach the TTS only when it is Cartesia-like and the emotion is
allowed, and the bus receives every event once, in order, with the right speech ids,
including for a reply the user interrupts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from livekit.agents import AgentSession
from livekit.agents import telemetry as lk_telemetry
from nats.js import JetStreamContext, api
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from avatar_agent.avatars import AvatarCatalog
from avatar_agent.conversation import Conversation
from avatar_agent.demo import DemoLLM, DemoTTS
from avatar_agent.local_io import PacedAudioOutput, TranscriptOutput
from avatar_agent.outbox import EventOutbox
from avatar_shared import subjects
from avatar_shared.bus import MSG_ID_HEADER, Bus
from avatar_shared.events import Event, TagKind, TagParsed, decode_event

pytestmark = pytest.mark.timeout(90)

AVATAR = AvatarCatalog.parse(
    {
        "avatars": {
            "ava": {
                "name": "Ava",
                "emotions": ["happy", "content"],
                "actions": {"wave_hand": "a wave", "nod": "a nod"},
            }
        }
    }
).get("ava")
FIRST = (
    '<emotion value="happy"/> Hello [action:wave_hand] there! '
    "<Emotion value=bored> Bye [Action: Nod ], see you. [action:moonwalk]"
)
SECOND = "This reply goes on and on, long enough to be cut short by the user. " * 4 + (
    "[action:wave_hand]"
)
THIRD = "Sure. [action:nod"  # a tag-like fragment at the very end is never spoken


@dataclass
class Run:
    tts: DemoTTS
    transcript: TranscriptOutput
    events: list[Event]
    msg_ids: list[tuple[str, str]]
    speeches: list[str]


async def converse(bus: Bus, js: JetStreamContext, room: str, *, keeps_emotions: bool) -> Run:
    assert AVATAR is not None
    tts = DemoTTS(seconds_per_char=0.01)
    session: AgentSession = AgentSession(
        llm=DemoLLM([FIRST, SECOND, THIRD], chunk_delay=0.002), tts=tts
    )
    session.output.audio = PacedAudioOutput(speed=2.0)
    transcript = TranscriptOutput()
    session.output.transcription = transcript
    outbox = EventOutbox(bus, room=room, avatar_id=AVATAR.id)
    conversation = Conversation(
        session, AVATAR, outbox, agent_name="test-agent", tts_keeps_emotions=keeps_emotions
    )
    await conversation.start()

    first = await session.generate_reply(user_input="hi")
    second = session.generate_reply(user_input="tell me more")
    async with asyncio.timeout(10):
        while session.agent_state != "speaking":
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    await session.interrupt()
    await second
    third = await session.generate_reply(user_input="and?")
    await session.aclose()
    await conversation.finish("test over")

    sub = await js.pull_subscribe(
        subjects.room_filter(room),
        stream=subjects.EVENTS_STREAM,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL),
    )
    events: list[Event] = []
    msg_ids: list[tuple[str, str]] = []
    async with asyncio.timeout(20):
        while not events or events[-1].type != "session_ended":
            for msg in await sub.fetch(batch=100, timeout=5):
                event = decode_event(msg.data)
                assert event is not None
                events.append(event)
                msg_ids.append((event.id, (msg.headers or {}).get(MSG_ID_HEADER, "")))
                await msg.ack()
    await sub.unsubscribe()
    return Run(tts, transcript, events, msg_ids, [first.id, second.id, third.id])


@pytest.fixture
async def cartesia_run(bus: Bus, js: JetStreamContext, room: str) -> AsyncIterator[Run]:
    return await converse(bus, js, room, keeps_emotions=True)


def tags_of(run: Run, speech: str) -> list[tuple[str, str, bool, int]]:
    return [
        (e.kind.value, e.name, e.valid, e.index)
        for e in run.events
        if isinstance(e, TagParsed) and e.speech_id == speech
    ]


async def test_no_action_tag_reaches_the_voice_or_the_transcript(cartesia_run: Run) -> None:
    spoken = "".join(cartesia_run.tts.heard)
    shown = cartesia_run.transcript.segments
    for text in (spoken, *shown):
        assert "[action" not in text.lower()
        assert "moonwalk" not in text
    assert shown[0] == "Hello there! Bye, see you."
    assert shown[2] == "Sure."
    assert all("<emotion" not in segment.lower() for segment in shown)


async def test_allowed_emotions_reach_a_cartesia_tts_and_others_do_not(cartesia_run: Run) -> None:
    spoken = "".join(cartesia_run.tts.heard)
    assert '<emotion value="happy"/>Hello there!' in spoken
    assert "bored" not in spoken.lower()


async def test_no_emotion_tag_reaches_any_other_tts(
    bus: Bus, js: JetStreamContext, room: str
) -> None:
    run = await converse(bus, js, room, keeps_emotions=False)
    spoken = "".join(run.tts.heard)
    assert "<" not in spoken
    assert "[" not in spoken
    assert spoken.startswith("Hello there! Bye, see you.")


async def test_events_arrive_once_in_order_with_their_speech_ids(cartesia_run: Run) -> None:
    events = cartesia_run.events
    first, second, third = cartesia_run.speeches
    assert [e.seq for e in events] == list(range(len(events)))
    assert all(event_id == msg_id for event_id, msg_id in cartesia_run.msg_ids)
    assert events[0].type == "session_started"
    assert events[-1].type == "session_ended"

    def lifecycle(speech: str) -> list[str]:
        return [
            e.type
            for e in events
            if e.speech_id == speech
            and e.type in ("speech_created", "playout_started", "speech_done")
        ]

    for speech in (first, second, third):
        assert lifecycle(speech) == ["speech_created", "playout_started", "speech_done"]
    assert tags_of(cartesia_run, first) == [
        ("emotion", "happy", True, 0),
        ("action", "wave_hand", True, 1),
        ("emotion", "bored", False, 2),
        ("action", "nod", True, 3),
        ("action", "moonwalk", False, 4),
    ]
    offsets = [
        (e.char_offset, e.word_index)
        for e in events
        if isinstance(e, TagParsed) and e.speech_id == first and e.kind is TagKind.ACTION
    ]
    assert offsets == [(5, 1), (16, 3), (26, 5)]  # positions in "Hello there! Bye, see you."
    assert tags_of(cartesia_run, third) == []  # "[action:nod" never closed: not a tag

    done = {e.speech_id: e for e in events if e.type == "speech_done"}
    assert [done[s].interrupted for s in (first, second, third)] == [False, True, False]  # type: ignore[attr-defined]
    states = [(e.old_state.value, e.new_state.value) for e in events if e.type == "agent_state"]  # type: ignore[attr-defined]
    assert ("thinking", "speaking") in states
    assert states[-1][1] in ("listening", "idle")


async def test_publish_spans_join_the_frameworks_trace(
    bus: Bus,
    js: JetStreamContext,
    room: str,
    tracer_provider: TracerProvider,
    spans: InMemorySpanExporter,
) -> None:
    lk_telemetry.set_tracer_provider(tracer_provider)  # as runtime() does in a job
    run = await converse(bus, js, room, keeps_emotions=True)
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    publishes = [s for s in finished if s.name.endswith(" publish")]
    assert len(publishes) == len(run.events)

    def ancestors(span: ReadableSpan) -> list[str]:
        names = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    tag_spans = [s for s in publishes if "tag_parsed" in s.name]
    assert len(tag_spans) == sum(1 for e in run.events if e.type == "tag_parsed") >= 5
    for span in tag_spans:  # each tag's publish sits inside the framework's TTS or text path
        assert "agent_session" in ancestors(span)
        assert {"tts_node", "transcription_node", "agent_turn"} & set(ancestors(span))
    # a speech's playout and end are its turn's; states are the session's, never a turn's
    for span in publishes:
        chain = ancestors(span)
        if any(kind in span.name for kind in ("speech_created", "playout_started", "speech_done")):
            assert "agent_turn" in chain, (span.name, chain)
        if any(kind in span.name for kind in ("agent_state", "user_state", "session_")):
            assert "agent_session" in chain, (span.name, chain)
            assert "agent_turn" not in chain, (span.name, chain)
