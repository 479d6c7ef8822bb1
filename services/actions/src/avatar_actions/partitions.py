"""Rooms partitioned across replicas: the work stream and one consumer per partition.

The agent's events stay as they are in ``AVATAR_EVENTS`` (the public contract). The
actions service sources them into its own work-queue stream, ``ACTIONS_WORK``, through a
subject transform that puts a partition number in front, computed by the server from the
room token (``{{partition(N, 2)}}``): every event of a room lands in the same partition,
in order, whoever published it. Each partition has one durable pull consumer; a replica
consumes only the partitions it holds a lease on (:mod:`avatar_actions.ownership`), so
each room is handled by one process at a time and its order holds.

Work subject: ``actions.work.<partition>.<original event subject>``. The partition count
is fixed when the stream is created; a service configured with another count refuses to
start rather than reshuffle rooms silently (docs/actions.md says how to change it).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from nats.js import api

from avatar_shared import subjects
from avatar_shared.bus import Bus, Delivered

WORK_STREAM = "ACTIONS_WORK"
WORK_PREFIX = "actions.work"
_SOURCE = f"{subjects.PREFIX}.{subjects.AGENT}.*.*"  # <type>.<room-token>


class PartitionMismatch(Exception):
    """The work stream exists with another partition count."""


@dataclass(frozen=True)
class WorkStream:
    partitions: int
    name: str = WORK_STREAM
    replicas: int = 1
    max_age_seconds: float = 300.0  # an event not handled by then is stale: dropped

    def transform(self) -> api.SubjectTransform:
        dest = (
            f"{WORK_PREFIX}.{{{{partition({self.partitions},2)}}}}."
            f"{subjects.PREFIX}.{subjects.AGENT}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"
        )
        return api.SubjectTransform(src=_SOURCE, dest=dest)

    def config(self, start: datetime.datetime) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.name,
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            max_age=self.max_age_seconds,
            sources=[
                api.StreamSource(
                    name=subjects.EVENTS_STREAM,
                    opt_start_time=start,  # from now on: old conversations are not replayed
                    subject_transforms=[self.transform()],
                )
            ],
        )

    async def ensure(self, bus: Bus) -> None:
        """Create the work stream, or check that the existing one has our partitions."""
        config = await bus.create_stream_if_absent(self.config(datetime.datetime.now(datetime.UTC)))
        sources = config.sources or []
        dests = {t.dest for s in sources for t in (s.subject_transforms or [])}
        if dests != {self.transform().dest}:
            raise PartitionMismatch(
                f"stream {self.name} routes events as {sorted(dests)}, not into "
                f"{self.partitions} partitions; ACTIONS_PARTITIONS must match it "
                "(docs/actions.md: changing the partition count)"
            )


def consumer_name(prefix: str, partition: int) -> str:
    return f"{prefix}-p{partition}"


def consumer_config(prefix: str, partition: int) -> api.ConsumerConfig:
    name = consumer_name(prefix, partition)
    return api.ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=f"{WORK_PREFIX}.{partition}.>",
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=30,
        deliver_policy=api.DeliverPolicy.ALL,
        max_ack_pending=2000,
        max_deliver=-1,
    )


class PartitionFeed:
    """A partition's consumer as a :class:`~avatar_actions.ports.WorkFeed`: starting it
    recreates the consumer, so the previous owner's unacked events come first, in order."""

    def __init__(self, bus: Bus, stream: str, prefix: str, partition: int, *, batch: int) -> None:
        self._bus = bus
        self._stream = stream
        self._config = consumer_config(prefix, partition)
        self._feed = bus.pull_feed(stream, consumer_name(prefix, partition), batch=batch)

    async def start(self) -> None:
        await self._bus.recreate_consumer(self._stream, self._config)
        await self._feed.start()

    async def take(self, wait: float) -> list[Delivered]:
        return await self._feed.take(wait)

    async def stop(self) -> None:
        await self._feed.stop()


def event_subject(work_subject: str) -> str:
    """The subject the agent published on, from a work-stream subject."""
    return work_subject.split(".", 3)[3]
