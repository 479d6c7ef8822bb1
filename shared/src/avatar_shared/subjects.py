"""NATS subject names: namespace first, identifiers last.

Every event travels on ``avatars.v1.<source>.<type>.<room>``:

- ``avatars``: the project namespace; ``v1``: the major version of the event contract.
- ``<source>``: the producing service, ``agent`` or ``actions``.
- ``<type>``: the event's ``type`` field (``speech_created``, ``tag_parsed``, ...).
- ``<room>``: the LiveKit room, encoded by :func:`avatar_shared.rooms.encode_room`.

Consumers subscribe on wildcards: ``avatars.v1.agent.>`` for everything the agent says,
``avatars.v1.*.*.<room>`` for one room. All of it is stored in one JetStream stream,
:data:`EVENTS_STREAM`.
"""

from __future__ import annotations

from dataclasses import dataclass

from avatar_shared.rooms import RoomNameError, decode_room, encode_room

NAMESPACE = "avatars"
CONTRACT_VERSION = 1
PREFIX = f"{NAMESPACE}.v{CONTRACT_VERSION}"

AGENT = "agent"
ACTIONS = "actions"
SOURCES = (AGENT, ACTIONS)

#: JetStream stream that stores every event of this contract version.
EVENTS_STREAM = "AVATAR_EVENTS"
#: Subjects captured by :data:`EVENTS_STREAM`.
EVENTS_STREAM_SUBJECTS = (f"{PREFIX}.>",)
#: Everything the agent publishes, for every room.
AGENT_EVENTS = f"{PREFIX}.{AGENT}.>"
#: Everything the actions service publishes, for every room.
ACTIONS_EVENTS = f"{PREFIX}.{ACTIONS}.>"

ROOM_PLACEHOLDER = "{room}"


@dataclass(frozen=True, slots=True)
class SubjectParts:
    source: str
    type: str
    room: str


def subject_for(source: str, event_type: str, room: str) -> str:
    """The subject an event of ``event_type`` about ``room`` is published on."""
    return f"{PREFIX}.{source}.{event_type}.{encode_room(room)}"


def subject_template(source: str, event_type: str) -> str:
    """The low-cardinality form of a subject, for span names and metric attributes."""
    return f"{PREFIX}.{source}.{event_type}.{ROOM_PLACEHOLDER}"


def type_filter(source: str, event_type: str) -> str:
    """A wildcard subject matching every event of one type, in every room."""
    return f"{PREFIX}.{source}.{event_type}.*"


def room_filter(room: str, source: str = "*") -> str:
    """A wildcard subject matching every event of one room."""
    return f"{PREFIX}.{source}.*.{encode_room(room)}"


def parse_subject(subject: str) -> SubjectParts:
    """Split a subject of this contract into its parts; raise ``ValueError`` otherwise."""
    tokens = subject.split(".")
    if len(tokens) != 5 or f"{tokens[0]}.{tokens[1]}" != PREFIX or tokens[2] not in SOURCES:
        raise ValueError(f"not a {PREFIX} event subject")
    try:
        room = decode_room(tokens[4])
    except RoomNameError as exc:
        raise ValueError(f"subject has an invalid room token: {exc}") from exc
    return SubjectParts(source=tokens[2], type=tokens[3], room=room)
