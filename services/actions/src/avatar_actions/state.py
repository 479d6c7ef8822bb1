"""What the actions service keeps per room: the rules' state, the packets waiting to
go out, and what it needs to apply each event once. Plain models that serialise to
JSON: the room store keeps them durable between batches and across replicas.

Every part is bounded (docs/actions.md, "Memory"): the rules keep at most a fixed number
of speeches and remembered ids, the outbox at most :data:`MAX_OUTBOX` packets, and
``applied`` the last :data:`APPLIED_REMEMBERED` event ids.
"""

from __future__ import annotations

from pydantic import BaseModel

from avatar_actions.rules import RoomState

#: Event ids remembered per room, to skip a redelivered event already applied. A room's
#: events in flight at once (a batch being written and the next) stay well below this.
APPLIED_REMEMBERED = 32
#: Packets a room may have waiting for LiveKit; older ones are dropped as stale first.
MAX_OUTBOX = 32


class Outgoing(BaseModel):
    """A packet decided on and not yet sent."""

    action: str
    speech_id: str | None
    cause_id: str
    decided_at: float
    #: When the packet should go out on the agent's clock (its cause happened then); a
    #: packet later than ``ACTIONS_MAX_LAG_SECONDS`` past it is dropped as stale.
    moment: float


class StoredRoom(BaseModel):
    avatar_id: str | None = None
    decisions_seq: int = 0
    rules: RoomState = RoomState()
    applied: list[str] = []  # ids of the latest events applied, to skip redeliveries
    outbox: list[Outgoing] = []  # in order; the head blocks the rest (per-room order)
    retry_at: float | None = None
    failures: int = 0
    #: How far behind the agent this room's latest event was applied (seconds).
    lag: float = 0.0
