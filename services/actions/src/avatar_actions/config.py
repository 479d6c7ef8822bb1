"""Settings of the actions service (``ACTIONS_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: What a replica holds besides its rooms, under load (interpreter, libraries, NATS and
#: HTTP buffers), and what each room kept in memory may cost at most, in MiB: measured
#: by the soak of ``make bench-actions`` (about 180 MiB and 5 KiB), with a margin.
BASE_MEMORY_MIB = 200
ROOM_MEMORY_MIB = 8 / 1024


def memory_bound_mib(max_rooms: int) -> float:
    """The most a replica's resident memory may reach with ``max_rooms``."""
    return BASE_MEMORY_MIB + max_rooms * ROOM_MEMORY_MIB


class ActionsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACTIONS_", extra="ignore")

    host: str = Field("0.0.0.0", description="Address of the health/metrics server")  # noqa: S104
    inspector: bool = Field(
        False, description="Serve the room inspector at /inspector on the health port"
    )
    inspector_anonymous: bool = Field(
        False, description="Let the inspector in without an API key (development mode only)"
    )
    inspector_trace_url: str = Field(
        "", description="Trace UI link of the inspector, {trace_id} replaced (e.g. Grafana)"
    )
    port: int = Field(8300, gt=0, lt=65536, description="Port of the health/metrics server")
    consumer: str = Field(
        "actions",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Prefix of the durable consumers, one per partition (<prefix>-p<n>)",
    )
    partitions: int = Field(
        16,
        ge=1,
        le=256,
        description="Room partitions; the most replicas that can share the work. Fixed once "
        "the work stream exists",
    )
    work_stream: str = Field(
        "ACTIONS_WORK", pattern=r"^[A-Za-z0-9_-]+$", description="The partitioned work stream"
    )
    work_max_age_seconds: float = Field(
        300, gt=0, description="Events not handled by then are stale and dropped"
    )
    lease_bucket: str = Field(
        "ACTIONS_LEASES", pattern=r"^[A-Za-z0-9_-]+$", description="KV bucket of partition leases"
    )
    state_bucket: str = Field(
        "ACTIONS_ROOMS", pattern=r"^[A-Za-z0-9_-]+$", description="KV bucket of room state"
    )

    lease_ttl_seconds: float = Field(
        10.0, ge=1, description="A dead replica's partitions move after this long"
    )
    batch_size: int = Field(
        256,
        ge=1,
        le=10_000,
        description="Events taken and applied at once (and asked for per pull request)",
    )
    max_rooms: int = Field(
        20_000,
        ge=1,
        description="Rooms a replica keeps in memory, at most (idle ones leave first; "
        "rooms with work pending stay)",
    )
    max_lag_seconds: float = Field(
        2.0,
        gt=0,
        description="A packet this late after its cause (agent's clock) is dropped as stale",
    )
    allowed_actions: list[str] = Field(
        [],
        description="Extra global allowlist, JSON list; empty: each avatar's own list "
        "(the agent's avatars file) decides",
    )
    debounce_seconds: float = Field(0.2, ge=0, description="Wait after a reply before gestures")
    gesture_ttl_seconds: float = Field(30.0, gt=0, description="Held gestures expire after this")
    cap_per_speech: int = Field(3, ge=0, description="Gestures allowed per reply")
    min_gap_seconds: float = Field(1.0, ge=0, description="Minimum time between gestures")
    topic: str = Field(
        "", description="LiveKit data topic of AVATAR_UPDATE packets (none if empty)"
    )
    destinations: list[str] = Field(
        [], description="Participant identities to send to, JSON list (everyone if empty)"
    )
    send_timeout_seconds: float = Field(
        5.0, gt=0, description="Per SendData call (or storing a delivery for the agent)"
    )
    delivery_ack_grace_seconds: float = Field(
        5.0,
        gt=0,
        description="ACTIONS_DELIVERY=agent: a delivery the agent has not answered this long "
        "after its deadline is counted unacknowledged",
    )
    send_retries: int = Field(
        2, ge=0, le=10, description="Quick retries per SendData; longer outages wait in the outbox"
    )
    state_ttl_seconds: float = Field(86400, gt=0, description="Room state kept this long")
