"""Session outputs for running without a LiveKit room: a paced speaker and a transcript.

:class:`PacedAudioOutput` is an audio sink that plays frames against the wall clock, as a
speaker would (``speed`` > 1 plays faster), so playout, interruption and the agent's
states behave as in a room. :class:`TranscriptOutput` collects the transcript the user
would read and hands each finished segment to a callback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from livekit import rtc
from livekit.agents.voice.io import AudioOutput, AudioOutputCapabilities, TextOutput


class PacedAudioOutput(AudioOutput):
    def __init__(self, *, speed: float = 1.0, label: str = "paced-speaker") -> None:
        super().__init__(label=label, capabilities=AudioOutputCapabilities(pause=False))
        self.speed = speed
        self.played_seconds = 0.0
        self._queued = 0.0  # seconds captured in this segment
        self._started_at: float | None = None
        self._finish: asyncio.Task[None] | None = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._started_at is None:
            self._started_at = time.monotonic()
            self.on_playback_started(created_at=time.time())
        self._queued += frame.duration / self.speed

    def flush(self) -> None:
        super().flush()
        if self._started_at is None or self._finish is not None:
            return  # nothing captured, or already cut short by clear_buffer
        remaining = self._started_at + self._queued - time.monotonic()
        self._finish = asyncio.create_task(self._play_out(max(0.0, remaining)))

    def clear_buffer(self) -> None:
        if self._started_at is None:
            return
        if self._finish is not None:
            self._finish.cancel()
        else:
            super().flush()  # the segment ends here
        played = min(self._queued, time.monotonic() - self._started_at)
        self._finished(played, interrupted=True)

    async def _play_out(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._finished(self._queued, interrupted=False)

    def _finished(self, played: float, *, interrupted: bool) -> None:
        self.played_seconds += played * self.speed
        self._started_at, self._queued, self._finish = None, 0.0, None
        self.on_playback_finished(playback_position=played * self.speed, interrupted=interrupted)


class TranscriptOutput(TextOutput):
    def __init__(self, on_segment: Callable[[str], None] | None = None) -> None:
        super().__init__(label="transcript", next_in_chain=None)
        self.segments: list[str] = []
        self._current: list[str] = []
        self._on_segment = on_segment

    async def capture_text(self, text: str) -> None:
        self._current.append(text)

    def flush(self) -> None:
        if not self._current:
            return
        segment, self._current = "".join(self._current), []
        self.segments.append(segment)
        if self._on_segment is not None:
            self._on_segment(segment)
