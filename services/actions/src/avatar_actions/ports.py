"""What the engine needs from the world, as small interfaces.

The engine (:mod:`avatar_actions.engine`) is written against these; the real adapters
are NATS (``avatar_shared.bus``: the work feed, buckets) and LiveKit
(:mod:`avatar_actions.publisher`) or the room's agent (:mod:`avatar_actions.delivery`),
wired by :func:`avatar_actions.bootstrap.bootstrap`;
``tests/unit/actions/fakes.py`` has in-memory ones, with an injected clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from avatar_actions.state import StoredRoom
from avatar_shared.bus import Delivery
from avatar_shared.events import Event

#: Seconds since the epoch, now (``time.time`` in production).
Clock = Callable[[], float]


#: An event delivered from the work stream, to be acked once its effect is durable.
WorkItem = Delivery


class WorkFeed(Protocol):
    async def start(self) -> None: ...

    async def take(self, wait: float) -> Sequence[WorkItem]:
        """What has arrived, in stream order; if nothing, the first within ``wait`` s."""
        ...

    async def stop(self) -> None: ...


class RoomStore(Protocol):
    async def load(self, partition: int, room: str) -> StoredRoom: ...

    def save(self, partition: int, room: str, stored: StoredRoom) -> Awaitable[object]:
        """Serialise now; the awaitable writes it."""
        ...

    async def rooms(self, partition: int) -> list[str]:
        """Every room of the partition with stored state."""
        ...


#: Namespace of packet nonces (a UUID of our own, so they cannot collide with others').
NONCE_NAMESPACE = uuid.UUID("4c1f0b0e-8f6a-5d0b-9a64-6f0e2d8b7a31")


def packet_nonce(room: str, cause_id: str, action: str) -> bytes:
    """The 16-byte nonce of the packet sending ``action`` in ``room`` because of event
    ``cause_id``: the same on every retry, redelivery and replica, different for any
    other packet. livekit-server drops a packet whose nonce it saw among the room's
    last 100."""
    return uuid.uuid5(NONCE_NAMESPACE, f"{room}\n{cause_id}\n{action}").bytes


@dataclass(frozen=True, slots=True)
class Packet:
    room: str
    action: str
    nonce: bytes
    #: Clock time after which the packet is stale: not sent (:class:`TooLate`).
    deadline: float = float("inf")
    cause_id: str = ""
    speech_id: str | None = None
    #: The room's event number, when the publisher puts the packet on the bus as an event.
    seq: int = 0


class PublishError(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class TooLate(PublishError):
    """The packet's deadline passed before it could be sent (waiting for a connection
    or a retry): shed as stale, not sent late."""

    def __init__(self) -> None:
        super().__init__("deadline passed before sending", permanent=True)


class Publisher(Protocol):
    #: Whether ``publish`` puts an event on the bus (delivery through the agent): the
    #: engine then gives the packet the room's next event number, as to its decisions.
    announces: bool

    async def publish(self, packet: Packet) -> None:
        """Deliver the packet, or raise :class:`PublishError`."""
        ...


class DecisionSink(Protocol):
    async def publish(self, event: Event) -> object:
        """Store a decision event; safe to repeat with the same event."""
        ...


class Leases(Protocol):
    """The lease bucket (``avatar_shared.bus.Bucket`` in production)."""

    async def put(self, key: str, value: bytes) -> int: ...

    async def create(self, key: str, value: bytes) -> int | None: ...

    async def update(self, key: str, value: bytes, *, last: int) -> int | None: ...

    async def delete(self, key: str, *, last: int | None = None) -> bool: ...

    async def keys(self, pattern: str) -> list[str]: ...


__all__ = [
    "NONCE_NAMESPACE",
    "Clock",
    "DecisionSink",
    "Leases",
    "Packet",
    "PublishError",
    "Publisher",
    "RoomStore",
    "TooLate",
    "WorkFeed",
    "WorkItem",
    "packet_nonce",
]
