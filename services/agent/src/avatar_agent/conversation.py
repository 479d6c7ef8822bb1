"""One conversation: an ``AgentSession`` running an :class:`AvatarAgent`, reported to the bus.

:class:`Conversation` is the only place that knows how livekit-agents' session events map
to our contract (``avatar_shared.events``). The LiveKit worker and the local demo both
use it, so what the bus sees does not depend on how the agent was started.

Traces: a conversation is one trace (the framework's ``agent_session``). A speech's
``playout_started`` and ``speech_done`` are published under its ``agent_turn`` (tags
already are: they are found inside the turn's nodes); session, agent and user state
events under the session span, never under a turn that happens to be current or ended.
Both spans are read from livekit-agents' private ``SpeechHandle._agent_turn_context`` and
``AgentSession._root_span_context`` (no public accessor exists; a test fails if an
upgrade renames them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, llm, room_io
from livekit.agents.types import TOPIC_CHAT
from livekit.agents.voice import SpeechHandle
from livekit.agents.voice.events import (
    AgentStateChangedEvent,
    CloseEvent,
    CloseReason,
    ConversationItemAddedEvent,
    ErrorEvent,
    SpeechCreatedEvent,
    UserInputTranscribedEvent,
    UserStateChangedEvent,
)
from opentelemetry import context as otel_context
from opentelemetry import metrics

from avatar_agent.agent import AvatarAgent, provider_name
from avatar_agent.avatars import Avatar
from avatar_agent.chat import ChatInput
from avatar_agent.config import DEFAULT_TEXT_LIMITS, TextLimits
from avatar_agent.delivery import RoomDeliveries
from avatar_agent.lifecycle import Lifecycle, SessionLimits
from avatar_agent.outbox import EventOutbox, TraceParent
from avatar_agent.providers import Models
from avatar_agent.tags import Tag
from avatar_shared import semconv
from avatar_shared.events import (
    AgentState,
    AgentStateChanged,
    PlayoutStarted,
    SessionEnded,
    SessionStarted,
    SpeechCreated,
    SpeechDone,
    TagParsed,
    UserState,
    UserStateChanged,
)

log = logging.getLogger(__name__)

#: How livekit-agents' close reasons read in ``session_ended``; others pass as they are.
END_REASONS = {
    CloseReason.PARTICIPANT_DISCONNECTED.value: "user_left",
    CloseReason.ERROR.value: "agent_error",
}
#: A realtime reply's ``incomplete`` reasons that are failures, as a chat LLM's
#: ``finish_reason`` names them.
INCOMPLETE_KINDS = {"max_output_tokens": "length", "content_filter": "content_filter"}
#: How long the closing line may take before the room is ended anyway.
CLOSING_LINE_SECONDS = 15.0
_meter = metrics.get_meter(semconv.INSTRUMENTATION_NAME)
_active = _meter.create_up_down_counter(
    semconv.METRIC_AGENT_SESSIONS_ACTIVE, description="Sessions running, by avatar"
)
_ended = _meter.create_counter(
    semconv.METRIC_AGENT_SESSIONS_ENDED, description="Sessions ended, by avatar and reason"
)


class Conversation:
    def __init__(
        self,
        session: AgentSession[None],
        avatar: Avatar,
        outbox: EventOutbox,
        *,
        agent_name: str,
        tts_keeps_emotions: bool,
        text: TextLimits = DEFAULT_TEXT_LIMITS,
        deliveries: RoomDeliveries | None = None,
        models: Models | None = None,
        limits: SessionLimits | None = None,
        end_room: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.session = session
        self.models = models
        self.chat = ChatInput(
            session,
            self._linked_identity,
            max_chars=text.max_text_input_chars,
            rate=text.text_input_rate,
        )
        self.lifecycle = Lifecycle(limits, self.close_for) if limits is not None else None
        self._end_room = end_room
        self.outbox = outbox
        self.deliveries = deliveries
        self.agent_name = agent_name
        self.agent = AvatarAgent(
            avatar,
            on_tag=self._on_tag,
            tts_keeps_emotions=tts_keeps_emotions,
            text=text,
            on_speech_begins=self._speech_begins,
            finishes=models.finishes if models is not None else None,
        )
        #: speeches created and not yet reported: (source, user initiated), by id
        self._created: dict[str, tuple[str, bool]] = {}
        self._playing: set[str] = set()  # speeches whose playout started and is not done
        self._fallbacks: set[str] = set()  # speeches saying the fallback line
        self._ended = False
        self._began_at: float | None = None
        self._session_context: otel_context.Context | None = None
        self._announced = False  # session_started emitted
        session.on("speech_created", self._on_speech_created)
        session.on("agent_state_changed", self._on_agent_state)
        session.on("user_state_changed", self._on_user_state)
        session.on("user_input_transcribed", self._on_user_input)
        session.on("conversation_item_added", self._on_item)
        session.on("error", self._on_error)
        session.on("close", self._on_close)

    def _session_trace(self) -> otel_context.Context | None:
        """The session span's context, once the session has started (kept: the framework
        forgets it when the session closes, and the session's end belongs there too)."""
        found = getattr(self.session, "_root_span_context", None)
        if found is not None:
            self._session_context = found
        return self._session_context

    def _turn_trace(self, handle: SpeechHandle | None) -> TraceParent:
        """A speech's ``agent_turn`` context, else (a turn not begun) the session's."""
        turn = getattr(handle, "_agent_turn_context", None)
        return turn if turn is not None else self._session_trace

    async def start(self, room: rtc.Room | None = None) -> None:
        """Begin reporting, start the session (in ``room``, or with the outputs set on it).
        ``session_started`` is emitted once the session's span exists: at its first state
        change, or when it has started."""
        self.begin()
        if room is None:
            await self.session.start(self.agent)
        else:
            # typed messages are read by ChatInput, bounded, not whole by livekit-agents
            options = room_io.RoomOptions(text_input=False)
            await self.session.start(agent=self.agent, room=room, room_options=options)
            room.register_text_stream_handler(TOPIC_CHAT, self.chat.on_stream)
        self._watch_realtime()
        self._announce()

    def _watch_realtime(self) -> None:
        """A realtime model's reply that ends ``incomplete`` (its output token limit, its
        content filter) is only a debug line in livekit-agents: read it from the model's
        own events."""
        if not isinstance(self.session.llm, llm.RealtimeModel):
            return
        session = self.agent.realtime_llm_session
        session.on("openai_server_event_received", self._on_realtime_event)

    def _linked_identity(self) -> str | None:
        linked = self.session.room_io.linked_participant
        return linked.identity if linked is not None else None

    def begin(self) -> None:
        """Start publishing (:meth:`start` calls it)."""
        self.outbox.start()
        self._began_at = time.monotonic()
        _active.add(1, {semconv.AVATAR_ID: self.agent.avatar.id})
        if self.deliveries is not None:
            self.deliveries.start()
        if self.lifecycle is not None:
            self.lifecycle.start()

    def _announce(self) -> None:
        """``session_started``, once, before any other event of the session."""
        if self._announced:
            return
        self._announced = True
        self.outbox.emit(SessionStarted, parent=self._session_trace, agent_name=self.agent_name)

    def end(self, reason: str) -> None:
        """The session is over (idempotent: the first reason wins)."""
        if self._ended:
            return
        self._ended = True
        self._announce()
        reason = END_REASONS.get(reason, reason)[:128] or "unknown"
        began = self._began_at
        duration = round(time.monotonic() - began, 3) if began is not None else None
        self.outbox.emit(
            SessionEnded, parent=self._session_trace, reason=reason, duration_seconds=duration
        )
        avatar = {semconv.AVATAR_ID: self.agent.avatar.id}
        _active.add(-1, avatar)
        _ended.add(1, avatar | {semconv.REASON: reason})
        log.info("session ended", extra={"reason": reason, "room": self.outbox.room})

    def user_active(self) -> None:
        """A sign of life from the user outside the voice pipeline."""
        if self.lifecycle is not None:
            self.lifecycle.user_active()

    def data_received(self, sender: str | None) -> None:
        """Data from the room (``sender``: its participant, None when the server sent it)
        is a sign of life only when the user sent it: not the avatar packets the actions
        service sends to the room, nor another participant's in a room shared."""
        if sender is not None and sender == self._linked_identity():
            self.user_active()

    async def close_for(self, reason: str) -> None:
        """End the session at a limit: the closing line (bounded), ``session_ended``, then
        the room, so the participant is disconnected and nothing keeps running."""
        line = self.agent.avatar.closing_line
        if line and not self._ended:
            try:
                handle = self.session.say(line, allow_interruptions=False, add_to_chat_ctx=False)
                async with asyncio.timeout(CLOSING_LINE_SECONDS):
                    await handle.wait_for_playout()
            except (RuntimeError, TimeoutError) as exc:  # closing, or a stuck voice
                log.info("closing line not finished", extra={"error": str(exc)[:200]})
        self.end(reason)
        if self._end_room is not None:
            await self._end_room()

    async def finish(self, reason: str, *, flush_timeout: float = 5.0) -> None:
        """End the conversation and publish what is still queued (bounded)."""
        if self.lifecycle is not None:
            await self.lifecycle.aclose()
        if self.deliveries is not None:
            await self.deliveries.aclose()
        await self.chat.aclose()
        self.end(reason)
        await self.outbox.aclose(flush_timeout)
        if self.models is not None:
            await self.models.aclose()

    # --- livekit-agents callbacks (synchronous, never raise into the framework) ------

    def _on_speech_created(self, ev: SpeechCreatedEvent) -> None:
        """Reported when the speech begins, inside its turn (:meth:`_speech_begins`)."""
        self._announce()
        handle = ev.speech_handle
        self._created[handle.id] = (ev.source, ev.user_initiated)
        handle.add_done_callback(self._speech_done_callback())

    def _speech_begins(self, speech_id: str, parent: TraceParent | None = None) -> None:
        """``speech_created``, once, as the speech's first node runs (its turn's span is
        current) or, for a speech that never ran, when it is done or starts playing."""
        created = self._created.pop(speech_id, None)
        if created is None:
            return
        source, user_initiated = created
        self.outbox.emit(
            SpeechCreated,
            parent=parent,
            speech_id=speech_id,
            source_kind=source,
            user_initiated=user_initiated,
        )

    def _speech_done_callback(self) -> Callable[[SpeechHandle], None]:
        def done(handle: SpeechHandle) -> None:
            self._speech_begins(handle.id, self._turn_trace(handle))
            heard = handle.id in self._playing
            self._playing.discard(handle.id)
            self.agent.speech_tags.forget(handle.id)
            failure = self.agent.failures.pop(handle.id)
            self.outbox.emit(
                SpeechDone,
                parent=self._turn_trace(handle),
                speech_id=handle.id,
                interrupted=handle.interrupted,
                failure=failure,
            )
            was_fallback = handle.id in self._fallbacks
            self._fallbacks.discard(handle.id)
            # a line through a TTS that just failed would fail too: only after the LLM's
            if failure and failure.startswith("llm_") and not heard and not was_fallback:
                self._say_fallback()

        return done

    def _say_fallback(self) -> None:
        """The user heard nothing of a reply the LLM failed: say so, once (never for a
        failed fallback line)."""
        line = self.agent.avatar.fallback_line
        if not line or self._ended:
            return
        try:
            handle = self.session.say(line, add_to_chat_ctx=False)
        except RuntimeError as exc:  # the session is closing
            log.info("fallback line not said", extra={"reason": str(exc)[:200]})
            return
        self._fallbacks.add(handle.id)

    def _on_tag(self, speech_id: str, tag: Tag) -> None:
        self.outbox.emit(
            TagParsed,
            speech_id=speech_id,
            kind=tag.kind,
            name=tag.name,
            valid=tag.valid,
            index=tag.index,
            char_offset=tag.char_offset,
            word_index=tag.word_index,
        )

    def _on_agent_state(self, ev: AgentStateChangedEvent) -> None:
        self._announce()
        self.outbox.emit(
            AgentStateChanged,
            parent=self._session_trace,
            old_state=AgentState(ev.old_state),
            new_state=AgentState(ev.new_state),
        )
        # The agent turns "speaking" on the first audio frame (or text, without audio) of
        # a speech and leaves that state when its playout ends: one transition per speech.
        if self.lifecycle is not None:
            self.lifecycle.agent_busy(ev.new_state in ("thinking", "speaking"))
        speech = self.session.current_speech
        if ev.new_state == "speaking" and speech is not None and speech.id not in self._playing:
            self._playing.add(speech.id)
            self._speech_begins(speech.id, self._turn_trace(speech))
            self.outbox.emit(PlayoutStarted, parent=self._turn_trace(speech), speech_id=speech.id)

    def _on_user_state(self, ev: UserStateChangedEvent) -> None:
        self._announce()
        self.outbox.emit(
            UserStateChanged,
            parent=self._session_trace,
            old_state=UserState(ev.old_state),
            new_state=UserState(ev.new_state),
        )
        if ev.new_state == "speaking":
            self.user_active()

    def _on_user_input(self, _: UserInputTranscribedEvent) -> None:
        self.user_active()

    def _on_item(self, ev: ConversationItemAddedEvent) -> None:
        if getattr(ev.item, "role", None) == "user":  # spoken or typed
            self.user_active()

    def _on_error(self, ev: ErrorEvent) -> None:
        """A realtime model's reply fails outside the agent's nodes (a ``response.done``
        with status ``failed``, an ``error`` event for its ``response.create``), so its
        failure arrives here and is charged to the speech under way, the one awaiting that
        reply. A chat LLM's and the TTS's failures are recorded in the nodes."""
        if not isinstance(ev.error, llm.RealtimeModelError):
            return
        speech = self.session.current_speech
        provider = provider_name(self.session.llm)
        self.agent.failures.record(speech.id if speech else None, "llm", provider, ev.error.error)

    def _on_realtime_event(self, event: dict[str, Any]) -> None:
        """Charged, as :meth:`_on_error` charges failures, to the speech under way."""
        response = event.get("response") if event.get("type") == "response.done" else None
        if not isinstance(response, dict) or response.get("status") != "incomplete":
            return
        details = response.get("status_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        kind = INCOMPLETE_KINDS.get(str(reason))
        if kind is None:
            return
        speech = self.session.current_speech
        provider = provider_name(self.session.llm)
        self.agent.failures.record_kind(speech.id if speech else None, "llm", provider, kind)

    def _on_close(self, ev: CloseEvent) -> None:
        self.end(ev.reason.value)
