"""The JetStream streams this project owns, declared in code and provisioned at start."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import api

from avatar_shared import subjects


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    duplicate_window_seconds: float = 120.0
    max_age_seconds: float = 24 * 3600.0
    replicas: int = 1
    max_msgs_per_subject: int = -1  # -1: no limit
    max_bytes: int = -1  # -1: no limit; past it the oldest messages go
    allow_msg_ttl: bool = False  # messages may carry their own time to live (Nats-TTL)
    #: the last message of a subject may be read with a direct get, whose API subject
    #: names the subject (so permissions can allow some subjects only)
    allow_direct: bool = False

    def config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            duplicate_window=self.duplicate_window_seconds,
            max_age=self.max_age_seconds,
            num_replicas=self.replicas,
            max_msgs_per_subject=self.max_msgs_per_subject,
            max_bytes=self.max_bytes,
            allow_msg_ttl=self.allow_msg_ttl or None,
            allow_direct=self.allow_direct or None,
        )


def events_stream(replicas: int = 1) -> StreamSpec:
    """The stream that stores every event of the current contract version. Direct gets
    are allowed: the agent reads whether a room's session has ended (its permissions
    name that subject only)."""
    return StreamSpec(
        name=subjects.EVENTS_STREAM,
        subjects=subjects.EVENTS_STREAM_SUBJECTS,
        replicas=replicas,
        allow_direct=True,
    )
